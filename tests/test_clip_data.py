"""Patho-CLIP data layer: records and store, HF-parity image preprocessing and tokenization,
the deterministic batch loader, the CSV / class-folder importers and the demo tile captions."""
from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from pathreasoner_jax.clip.loader import ClipBatches, encode_texts
from pathreasoner_jax.clip.preprocess import (load_clip_tokenizer, preprocess_images, tokenize,
                                              train_clip_tokenizer)
from pathreasoner_jax.clip.records import ImageText, ImageTextStore, decode, encode, write_store
from pathreasoner_jax.core.errors import UserError

TEXTS = ["Keratin pearls and eosinophilic cytoplasm.", "Irregular glands with dirty necrosis.",
         "Dense lymphocytic infiltrate, germinal centers.", "Regular crypt architecture and goblet cells.",
         "an H&E image of squamous cell carcinoma.", "a histopathology image of colorectal adenocarcinoma."]


def _png(rng, h=12, w=16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    return [ImageText(_png(rng, 10 + i % 5, 14), TEXTS[i % len(TEXTS)] + f" #{i}", i % 3, f"class {i % 3}",
                      f"img-{i}.png") for i in range(n)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_clip_tokenizer(TEXTS * 3, str(tmp_path_factory.mktemp("tok") / "tokenizer"), vocab_size=400)


def test_record_round_trip():
    r = _records(1)[0]
    assert decode(encode(r)) == r
    assert decode(encode(ImageText(b"\x89PNG", "x"))) == ImageText(b"\x89PNG", "x", -1, "", "")
    with pytest.raises(ValueError):
        decode(b"\x93\x01\x02\x03")  # a msgpack list, not a record


def test_store_write_read(tmp_path):
    recs = _records(7)
    m = write_store(str(tmp_path), {"train": recs[:5], "test": recs[5:], "val": []}, ["a", "b", "c"],
                    {"source": "unit"}, records_per_shard=2)
    assert m["counts"] == {"train": 5, "test": 2, "val": 0} and len(m["splits"]["train"]["shards"]) == 3
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    store = ImageTextStore(str(tmp_path))
    assert store.class_names == ["a", "b", "c"] and store.meta == {"source": "unit"}
    train = store.split("train")
    assert len(train) == 5 and len(store.split("val")) == 0
    for i in (4, 0, 3, 2, 1):  # random access across shards
        assert train[i] == recs[i]
    assert store.split("test")[1] == recs[6]
    with pytest.raises(IndexError):
        train[5]
    with pytest.raises(UserError, match="no split 'dev'"):
        store.split("dev")
    # a smaller rewrite leaves no stale shard behind
    write_store(str(tmp_path), {"train": recs[:1]}, [], {})
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".array_record")) == ["train-00000.array_record"]


def test_store_missing_or_corrupt_manifest(tmp_path):
    with pytest.raises(UserError, match=rf"{tmp_path}.*clip-data"):
        ImageTextStore(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json.*clip-data"):
        ImageTextStore(str(tmp_path))


# The HF reference runs in a child process with torchvision hidden: that selects the PIL
# backend, which is CLIPImageProcessor's (and open_clip's) resize; the torchvision backend
# resizes tensors differently, and a torchvision built for another torch cannot even import.
HF_IMAGE_REFERENCE = """
import sys
sys.modules["torchvision"] = None
import numpy as np, transformers
d = np.load(sys.argv[1])
cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
out = {}
for s in map(int, sys.argv[3:]):
    hf = cls(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    out[str(s)] = hf([d[k] for k in sorted(d.files)], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
np.savez(sys.argv[2], **out)
"""


def test_preprocess_matches_hf_clip_image_processor(tmp_path):
    import subprocess
    import sys
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(37, 53, 3), (64, 40, 3), (30, 30, 3), (21, 90, 3)]]
    np.savez(tmp_path / "in.npz", **{str(i): im for i, im in enumerate(images)})
    subprocess.run([sys.executable, "-c", HF_IMAGE_REFERENCE, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"),
                    "24", "17"], check=True, capture_output=True)
    want = np.load(tmp_path / "out.npz")
    for size in (24, 17):
        got = preprocess_images(images, size)
        assert got.shape == (4, size, size, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, want[str(size)], atol=1e-5)
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    np.testing.assert_array_equal(preprocess_images(pngs, 24, threads=2), preprocess_images(images, 24))


def _tiny_clip_tokenizer(folder):
    """A transformers CLIP tokenizer from a hand-written vocab/merges (no download)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["k e", "ke r", "a t", "i n</w>", "p e", "pe a", "r l</w>", "pea rl</w>"]
    vocab = {}
    for t in alphabet + [a + "</w>" for a in alphabet] + [m.replace(" ", "") for m in merges]:
        vocab.setdefault(t, len(vocab))
    for t in ("<|startoftext|>", "<|endoftext|>"):
        vocab[t] = len(vocab)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizerFast.from_pretrained(folder)


def test_tokenize_matches_hf(tmp_path, tok_dir):
    ours = load_clip_tokenizer(tok_dir)
    assert ours.pad_token_id == ours.eos_token_id != ours.bos_token_id
    assert ours.convert_ids_to_tokens([ours.bos_token_id, ours.eos_token_id]) == ["<|startoftext|>", "<|endoftext|>"]
    clip = _tiny_clip_tokenizer(str(tmp_path / "clip"))
    assert clip.pad_token == "<|endoftext|>"  # HF CLIP pads with eos
    texts = ["Keratin pearls", "a much longer caption about keratin pearls in nests and more words than fit", "", "x"]
    for tok in (ours, clip):
        for L in (6, 12, 40):
            ids, mask = tokenize(tok, texts, L)
            want = tok(texts, padding="max_length", truncation=True, max_length=L)
            assert ids.dtype == mask.dtype == np.int32 and ids.shape == (4, L)
            np.testing.assert_array_equal(ids, np.asarray(want["input_ids"]))
            np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"]))
            assert (ids[:, 0] == tok.bos_token_id).all()
            assert (ids[np.arange(4), mask.sum(1) - 1] == tok.eos_token_id).all()  # eos kept when truncated
    np.testing.assert_array_equal(encode_texts(ours, texts, 12)[0], tokenize(ours, texts, 12)[0])
    with pytest.raises(UserError, match="nowhere.*clip-data"):
        load_clip_tokenizer(str(tmp_path / "nowhere"))


def test_loader_is_deterministic_and_epochs_are_permutations(tmp_path, tok_dir):
    recs = _records(10)
    write_store(str(tmp_path), {"train": recs}, ["class 0", "class 1", "class 2"], {})
    tok = load_clip_tokenizer(tok_dir)
    src = ImageTextStore(str(tmp_path)).split("train")
    a = ClipBatches(src, tok, 16, 8, batch_size=4, seed=3, epochs=3)
    b = ClipBatches(ImageTextStore(str(tmp_path)).split("train"), tok, 16, 8, batch_size=4, seed=3, epochs=3)
    assert len(a) == 6 and a.steps_per_epoch == 2
    for step in (5, 0, 3):  # any order: a pure function of (seed, step)
        x, y = a.batch(step), b.batch(step)
        assert x.keys() == {"pixels", "tokens", "token_mask", "labels"}
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    x = a.batch(1)
    assert x["pixels"].shape == (4, 16, 16, 3) and x["pixels"].dtype == np.float32
    assert x["tokens"].shape == x["token_mask"].shape == (4, 8) and x["tokens"].dtype == np.int32
    assert x["labels"].dtype == np.int32
    idx = a.indices(1)
    np.testing.assert_array_equal(x["labels"], [recs[i].label for i in idx])
    np.testing.assert_array_equal(x["tokens"], tokenize(tok, [recs[i].caption for i in idx], 8)[0])
    full = ClipBatches(src, tok, 16, 8, batch_size=4, seed=3, drop_last=False)
    assert full.steps_per_epoch == 3 and len(full.batch(2)["labels"]) == 2
    for e in range(3):
        seen = np.concatenate([full.indices(e * 3 + j) for j in range(3)])
        assert sorted(seen) == list(range(10))
        np.testing.assert_array_equal(seen, np.random.default_rng((3, e)).permutation(10))
    assert not np.array_equal(full.order(0), full.order(1))
    assert [s for s, _ in a.iterate(4)] == [4, 5]
    with pytest.raises(UserError, match="fewer than one batch"):
        ClipBatches(src, tok, 16, 8, batch_size=11, seed=0)


def test_caption_csv_import(tmp_path, caplog):
    from data_prep.image_text import csv_class_names, import_caption_csv
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png(rng))
    Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(tmp_path / "img" / "c.jpg")
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = tmp_path / "bad.csv"
    bad.write_text("image_path,text\nimg/a.png,hello\n")
    with pytest.raises(UserError, match=r"bad\.csv.*'caption'"):
        import_caption_csv(str(bad))
    good = tmp_path / "captions.csv"
    good.write_text('image_path,caption,class_name\nimg/a.png,"Keratin, pearls",squamous\n'
                    "img/bad.png,broken,squamous\nimg/c.jpg,Irregular glands,adeno\nimg/none.png,gone,adeno\n")
    with caplog.at_level(logging.WARNING):
        recs = import_caption_csv(str(good))
    msgs = [r.getMessage() for r in caplog.records]
    assert any("captions.csv: row 2" in m and "bad.png" in m for m in msgs)
    assert any("row 4" in m and "none.png" in m for m in msgs) and any("2 of 4 rows skipped" in m for m in msgs)
    assert [r.caption for r in recs] == ["Keratin, pearls", "Irregular glands"]
    assert Image.open(io.BytesIO(recs[1].image_png)).format == "PNG"
    assert np.asarray(Image.open(io.BytesIO(recs[1].image_png))).shape == (9, 7, 3)
    assert csv_class_names(recs) == ["adeno", "squamous"] and [r.label for r in recs] == [1, 0]
    # relative paths against image_root
    (tmp_path / "elsewhere.csv").write_text("image_path,caption,label\na.png,x,2\n")
    assert import_caption_csv(str(tmp_path / "elsewhere.csv"), str(tmp_path / "img"))[0].label == 2


def test_class_folders(tmp_path):
    from data_prep.image_text import import_class_folders
    rng = np.random.default_rng(2)
    for cls, names in (("lymphoid_tissue", ["x.png", "y.jpg"]), ("adenocarcinoma", ["z.png"])):
        (tmp_path / cls).mkdir()
        for n in names:
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / cls / n)
    (tmp_path / "lymphoid_tissue" / "notes.txt").write_text("ignored")
    recs, names = import_class_folders(str(tmp_path))
    assert names == ["adenocarcinoma", "lymphoid tissue"]
    assert [(r.label, r.caption, r.class_name) for r in recs] == [
        (0, "adenocarcinoma", "adenocarcinoma"), (1, "lymphoid tissue", "lymphoid tissue"),
        (1, "lymphoid tissue", "lymphoid tissue")]
    with pytest.raises(UserError, match="missing.*not found"):
        import_class_folders(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    from data_prep.demo.corpus import generate_demo_corpus
    from pathreasoner_jax.config import load_config
    root = tmp_path_factory.mktemp("clipdemo")
    # 3 slides per class, so every class has a train, a val and a test slide
    generate_demo_corpus(str(root / "cache" / "corpus-s0-n12"), 12, 0, sizes=(256, 512))
    return load_config(None, [f"data.cache_dir={root / 'cache'}", "data.demo_num_slides=12", "run.seed=0",
                              f"run.root={root / 'runs'}", "run.progress=false", "clip.demo_tiles_per_slide=3",
                              "clip.demo_tile_size=32", "clip.splits=[0.4,0.3,0.3]"])


def test_demo_tile_captions(demo_cfg):
    from data_prep.demo.corpus import CLASS_INFO
    from data_prep.demo.synth import CLASSES
    from data_prep.image_text import caption_vocabulary, demo_tile_captions
    splits, names = demo_tile_captions(demo_cfg)
    assert names == [CLASS_INFO[c][0] for c in CLASSES] and "squamous cell carcinoma" in names
    slides = {k: {r.source.split("@")[0] for r in v} for k, v in splits.items()}
    assert all(slides.values()) and not (slides["train"] & slides["val"] or slides["train"] & slides["test"]
                                         or slides["val"] & slides["test"])
    recs = [r for v in splits.values() for r in v]
    assert len(recs) == 12 * 3 and len({r.source for r in recs}) == len(recs)
    synonyms, _ = caption_vocabulary()
    for r in recs:
        assert 0 <= r.label < len(names) and r.class_name == names[r.label]
        cls = CLASSES[r.label]
        others = {f for c, info in CLASS_INFO.items() if c != cls for f in info[1]}
        own = [f for f in CLASS_INFO[cls][1] if f not in others]
        assert any(s.lower() in r.caption.lower() for f in own for s in [f, *synonyms.get(f, [])]), r.caption
        tile = np.asarray(Image.open(io.BytesIO(r.image_png)))
        assert tile.shape == (32, 32, 3)
    for lab in range(len(names)):
        assert len({r.caption for r in recs if r.label == lab}) > 1
    again, _ = demo_tile_captions(demo_cfg)
    assert again == splits  # deterministic in run.seed


def test_build_clip_data_end_to_end(demo_cfg, capsys):
    from data_prep.image_text import build_clip_data
    from pathreasoner_jax.clip.records import clip_data_dir, clip_tokenizer_path
    assert build_clip_data(demo_cfg) == 0
    out = clip_data_dir(demo_cfg)
    store = ImageTextStore(out)
    assert sum(store.counts.values()) == 36 and store.meta["source"] == "demo"
    tok = load_clip_tokenizer(clip_tokenizer_path(demo_cfg))
    assert store.meta["vocab_size"] == len(tok)
    b = ClipBatches(store.split("train"), tok, 24, 16, batch_size=4, seed=0, epochs=1).batch(0)
    assert b["pixels"].shape == (4, 24, 24, 3) and (b["token_mask"].sum(1) > 3).all()
    assert build_clip_data(demo_cfg) == 0 and "skipping" in capsys.readouterr().err
