"""VL records (vl/records.py): codec round trip, validation, the store on the shared
record-store machinery (clip/records.py), which the image-text store still uses."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from pathreasoner_jax.clip.records import ImageText, ImageTextStore, write_store
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.vl.records import VLRecord, VLStore, decode, encode, validate, write_vl_store


def _png(seed=0, h=6, w=5) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _caption(i=0):
    return VLRecord("caption", [_png(i)], caption=f"Keratin pearls #{i}.", category="skin", source=f"img-{i}.png",
                    label=i % 3)


def _conversation(i=0, n_images=2):
    return VLRecord("conversation", [_png(i + k) for k in range(n_images)], conversation=[
        {"role": "system", "content": "You are a pathologist."},
        {"role": "user", "content": "<image>\n" * n_images + "Describe."},
        {"role": "assistant", "content": "<observe>glands</observe><think>so</think><answer>A</answer>"},
        {"role": "user", "content": "And the grade?"},
        {"role": "assistant", "content": "Low."}], source=f"conv-{i}")


def _mcq(i=0):
    return VLRecord("mcq", [_png(i)], question="What is the diagnosis?", options=["x", "y", "z", "w"],
                    answer="ABCD"[i % 4], category=["colon", "skin"][i % 2], source=f"q-{i}", label=i % 4)


def test_round_trip_every_kind():
    for rec in (_caption(1), _conversation(2), _mcq(3)):
        back = decode(encode(rec))
        assert back == rec and type(back.images[0]) is bytes
    assert decode(encode(VLRecord("caption", [b"\x89PNG"], caption="c"))) == VLRecord("caption", [b"\x89PNG"], "c")
    assert "images" not in repr(_caption())  # a record prints without its PNGs
    with pytest.raises(ValueError, match="VL record"):
        decode(b"\x93\x01\x02\x03")
    import msgpack
    with pytest.raises(ValueError, match="version 1"):
        decode(msgpack.packb({"v": 99, "kind": "caption"}))


@pytest.mark.parametrize("change, message", [
    (lambda r: setattr(r, "kind", "vqa"), "unknown record kind 'vqa'"),
    (lambda r: r.images.append(_png(9)), "1 <image> placeholder.*for 2 image"),
    (lambda r: setattr(r, "images", []), "1 <image> placeholder.*for 0 image"),
    (lambda r: r.conversation[1].update(content="<image> <image> hi"), "2 <image>.*for 1"),
    (lambda r: r.conversation[2].update(content="<image> answer"), "turn 2 \\(assistant\\).*placeholder"),
    (lambda r: r.conversation.append({"role": "user", "content": "more?"}), "turns system/user/assistant/user do not alternate"),
    (lambda r: r.conversation.insert(1, {"role": "assistant", "content": "hi"}), "turns system/assistant/user/assistant do not"),
    (lambda r: r.conversation[0].update(role="doctor"), "turn 0 is not"),
    (lambda r: r.conversation[2].update(content="  "), "turn 2 \\(assistant\\) is empty"),
    (lambda r: setattr(r, "conversation", []), "conversation record without turns"),
    (lambda r: setattr(r, "images", [b"GIF89a..."]), "image 0 is not PNG"),
    (lambda r: setattr(r, "label", -2), "label -2"),
])
def test_conversation_validation(change, message):
    rec = VLRecord("conversation", [_png()], conversation=[
        {"role": "system", "content": "sys"}, {"role": "user", "content": "<image>\nWhat?"},
        {"role": "assistant", "content": "That."}])
    assert validate(rec, "here") is rec
    change(rec)
    with pytest.raises(UserError, match=f"^here: {message}"):
        validate(rec, "here")


@pytest.mark.parametrize("make, message", [
    (lambda: VLRecord("caption", [_png()], caption="  "), "empty caption"),
    (lambda: VLRecord("caption", [], caption="x"), "caption record without an image"),
    (lambda: VLRecord("caption", [_png()], caption="<image> x"), "<image> in a caption"),
    (lambda: VLRecord("mcq", [_png()], question="Q?", options=["a", "b"], answer="C"), "answer 'C'.*A..B"),
    (lambda: VLRecord("mcq", [_png()], question="Q?", options=["a", "b"], answer="b"), "answer 'b'"),
    (lambda: VLRecord("mcq", [_png()], question="Q?", options=["a", "b"], answer="AB"), "answer 'AB'"),
    (lambda: VLRecord("mcq", [_png()], question="Q?", options=["a", "b"], answer=""), "answer ''"),
    (lambda: VLRecord("mcq", [_png()], question="Q?", options=["a"], answer="A"), "1 options"),
    (lambda: VLRecord("mcq", [_png()], question="Q?", options=["a", " "], answer="A"), "2 options.*non-empty"),
    (lambda: VLRecord("mcq", [_png()], question="Q?", options=["a", "A "], answer="A"), "repeated option"),
    (lambda: VLRecord("mcq", [_png()], question=" ", options=["a", "b"], answer="A"), "empty question"),
    (lambda: VLRecord("mcq", [_png()], question="<image> Q?", options=["a", "b"], answer="A"), "<image> in a mcq"),
    (lambda: ImageText(_png(), "x"), "a ImageText, not a VLRecord"),
])
def test_caption_and_mcq_validation(make, message):
    with pytest.raises(UserError, match=f"^row 3: {message}"):
        validate(make(), "row 3")
    assert validate(_mcq(), "ok") and validate(_caption(), "ok")


def test_store_write_read(tmp_path):
    train = [_caption(0), _conversation(1), _mcq(2), _mcq(3), _caption(4)]
    m = write_vl_store(str(tmp_path), {"train": train, "val": [], "test": iter([_mcq(5)])}, {"source": "unit"},
                       records_per_shard=2)
    assert m["counts"] == {"train": 5, "val": 0, "test": 1} and len(m["splits"]["train"]["shards"]) == 3
    assert m["kinds"] == {"train": {"caption": 2, "conversation": 1, "mcq": 2}, "val": {}, "test": {"mcq": 1}}
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    store = VLStore(str(tmp_path))
    assert store.meta == {"source": "unit"} and store.kinds == m["kinds"] and store.manifest["format"] == "pathreasoner-vl"
    assert sorted(store.splits()) == ["test", "train", "val"] and store.counts == m["counts"]
    src = store.split("train")
    assert len(src) == 5 and len(store.split("val")) == 0
    for i in (4, 0, 3, 1, 2):  # random access across shards
        assert src[i] == train[i]
    assert store.split("test")[0] == _mcq(5)
    with pytest.raises(IndexError):
        src[5]
    with pytest.raises(UserError, match="no split 'dev' in the VL store"):
        store.split("dev")
    # a smaller rewrite leaves no stale shard behind
    write_vl_store(str(tmp_path), {"train": [_mcq(0)]})
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".array_record")) == ["train-00000.array_record"]


def test_bad_record_aborts_the_write(tmp_path):
    write_vl_store(str(tmp_path), {"train": [_caption()]})
    bad = _mcq(1)
    bad.answer = "E"
    with pytest.raises(UserError, match=r"split 'train' record 1 \(q-1\): answer 'E'"):
        write_vl_store(str(tmp_path), {"train": [_caption(), bad]})
    assert not os.path.exists(tmp_path / "manifest.json")  # the old store is gone, no half store readable
    with pytest.raises(UserError, match="no VL store here.*build_vl_data"):
        VLStore(str(tmp_path))


def test_store_formats_do_not_mix(tmp_path):
    """The two stores share the machinery, not their format: each refuses the other's folder."""
    clip_dir, vl_dir = tmp_path / "clip", tmp_path / "vl"
    write_store(str(clip_dir), {"train": [ImageText(_png(), "cap", 0, "a", "s")]}, ["a"], {"k": 1})
    write_vl_store(str(vl_dir), {"train": [_caption()]})
    with pytest.raises(UserError, match="not a manifest of the VL store format"):
        VLStore(str(clip_dir))
    with pytest.raises(UserError, match="not a manifest of the image-text store format.*clip-data"):
        ImageTextStore(str(vl_dir))
    m = json.loads((vl_dir / "manifest.json").read_text())
    m["version"] = 0
    (vl_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="version 0, this code reads 1.*force=True"):
        VLStore(str(vl_dir))
    # the generalised image-text store is what it was
    clip = ImageTextStore(str(clip_dir))
    assert clip.class_names == ["a"] and clip.meta == {"k": 1} and clip.counts == {"train": 1}
    assert clip.split("train")[0] == ImageText(_png(), "cap", 0, "a", "s")
    assert set(json.loads((clip_dir / "manifest.json").read_text())) == {
        "format", "version", "class_names", "counts", "splits", "meta"}
    os.remove(clip_dir / "train-00000.array_record")
    with pytest.raises(UserError, match="shard listed in the manifest is missing.*clip-data --force"):
        ImageTextStore(str(clip_dir)).split("train")[0]
