"""VL importers (LLaVA JSON, captions CSV, PathMMU-style MCQ JSON), the demo VL corpus and
the per-stage stores (data_prep/vl_data.py)."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from data_prep.vl_data import (build_vl_data, demo_vl_corpus, import_caption_csv_vl, import_llava_json,
                               import_mcq_json, split_vl_records)
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.eval.metrics import is_format_compliant
from pathreasoner_jax.vl.mcq import extract_letter, mcq_prompt
from pathreasoner_jax.vl.records import LETTERS, VLRecord, VLStore


@pytest.fixture
def images(tmp_path):
    """img/a.png (6×5), img/b.jpg (4×7), img/bad.png (truncated); no img/none.png."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(rng.integers(0, 256, (4, 7, 3), dtype=np.uint8)).save(tmp_path / "img" / "b.jpg")
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return tmp_path


def _shape(png: bytes):
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG"
    return np.asarray(im).shape


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _turns(*values):
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(values)]


def test_import_llava_json(images, caplog):
    rows = [{"id": "one", "image": "img/a.png", "conversations": _turns("<image>\nWhat is shown?", "Glands.")},
            {"id": "two", "image": ["img/a.png", "img/b.jpg"], "conversations": _turns("Compare <image>.", "Same.")},
            {"id": "three", "image": "img/b.jpg", "conversations": _turns("Describe.", "Nests.", "Grade?", "High.")},
            {"id": "four", "image": "img/bad.png", "conversations": _turns("<image>\nx", "y")},
            {"id": "five", "image": "img/none.png", "conversations": _turns("<image>\nx", "y")},
            {"id": "six", "conversations": _turns("What is a granuloma?", "A collection of macrophages.")},
            {"id": "seven", "image": "img/a.png", "conversations": _turns("<image>\nx", "  ")}]
    path = _write(images / "llava.json", rows)
    with caplog.at_level(logging.WARNING):
        recs = import_llava_json(path)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("llava.json: row 4 (id four)" in m and "bad.png" in m for m in msgs)
    assert any("row 5 (id five)" in m and "none.png" in m for m in msgs)
    assert any("row 7 (id seven): empty turn" in m for m in msgs) and any("3 of 7 rows skipped" in m for m in msgs)
    assert [r.kind for r in recs] == ["conversation"] * 4
    one, two, three, six = recs
    assert one.conversation == [{"role": "user", "content": "<image>\nWhat is shown?"},
                                {"role": "assistant", "content": "Glands."}]
    assert [_shape(b) for b in two.images] == [(6, 5, 3), (4, 7, 3)]
    assert two.conversation[0]["content"] == "<image>\nCompare <image>."  # one missing placeholder prepended
    assert three.conversation[0]["content"] == "<image>\nDescribe." and three.conversation[2]["content"] == "Grade?"
    assert six.images == [] and "<image>" not in six.conversation[0]["content"]
    assert one.source.endswith("img/a.png") and six.source == f"{path}#6"
    # relative paths against image_root
    _write(images / "elsewhere.json", [{"image": "a.png", "conversations": _turns("<image>", "ok")}])
    assert len(import_llava_json(str(images / "elsewhere.json"), str(images / "img"))[0].images) == 1


@pytest.mark.parametrize("rows, message", [
    ({"not": "a list"}, "llava.json: expected a JSON list"),
    ([["a"]], r"llava.json: row 1: not a JSON object"),
    ([{"id": 7, "image": "img/a.png"}], r"row 1 \(id 7\): no 'conversations' list"),
    ([{"image": "img/a.png", "conversations": [{"from": "doctor", "value": "x"}]}], r"row 1: turn 0 is not"),
    ([{"image": "img/a.png", "conversations": _turns("<image><image> x", "y")}], "row 1: 2 <image>.*for 1 image"),
    ([{"image": "img/a.png", "conversations": _turns("<image> x", "y", "z")}], "row 1: turns .* do not alternate"),
    ([{"image": 5, "conversations": _turns("x", "y")}], "row 1: 'image' is neither"),
    ([{"image": "img/bad.png", "conversations": _turns("<image> x", "y")}], "no usable rows \\(1 rows, 1 skipped"),
])
def test_llava_bad_files(images, rows, message):
    with pytest.raises(UserError, match=message):
        import_llava_json(_write(images / "llava.json", rows))


def test_llava_missing_or_broken_file(tmp_path):
    with pytest.raises(UserError, match="nowhere.json: LLaVA conversation JSON not found"):
        import_llava_json(str(tmp_path / "nowhere.json"))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(UserError, match="broken.json: unreadable JSON"):
        import_llava_json(str(tmp_path / "broken.json"))


def test_import_caption_csv_vl(images, caplog):
    (images / "captions.csv").write_text('image_path,caption,class_name,label\nimg/a.png,"Keratin, pearls",scc,2\n'
                                         "img/bad.png,broken,scc,2\nimg/b.jpg,Irregular glands,adeno,1\n")
    with caplog.at_level(logging.WARNING):
        recs = import_caption_csv_vl(str(images / "captions.csv"))
    assert any("captions.csv: row 2" in r.getMessage() and "bad.png" in r.getMessage() for r in caplog.records)
    assert [(r.kind, r.caption, r.category, r.label) for r in recs] == [
        ("caption", "Keratin, pearls", "scc", 2), ("caption", "Irregular glands", "adeno", 1)]
    assert _shape(recs[1].images[0]) == (4, 7, 3) and recs[1].source.endswith("img/b.jpg")
    (images / "nocap.csv").write_text("image_path,text\nimg/a.png,x\n")
    with pytest.raises(UserError, match=r"nocap\.csv: no 'caption' column"):
        import_caption_csv_vl(str(images / "nocap.csv"))
    with pytest.raises(UserError, match="missing.csv: captions CSV not found"):
        import_caption_csv_vl(str(images / "missing.csv"))


def test_import_mcq_json(images, caplog):
    rows = [{"img": "img/a.png", "question": "<image>\nWhat is shown?", "options": ["glands", "nests", "follicles"],
             "answer": "B", "category": "PubMed"},
            {"image": "img/b.jpg", "question": "Diagnosis?", "options": {"B": "adenoma", "A": "carcinoma"},
             "answer": "adenoma"},
            {"img": "img/a.png", "question": "Which?", "options": ["A) Hyperplastic polyp", "B) Tubular adenoma",
                                                                    "C) Serrated lesion"], "answer": "C) Serrated lesion"},
            {"img": "img/a.png", "question": "Stain?", "options": ["H&E", "PAS"], "answer": "(a)"},
            {"img": "img/bad.png", "question": "x?", "options": ["a", "b"], "answer": "A"},
            {"img": "", "question": "x?", "options": ["a", "b"], "answer": "A"}]
    path = _write(images / "mcq.json", rows)
    with caplog.at_level(logging.WARNING):
        recs = import_mcq_json(path)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("mcq.json: row 5" in m and "bad.png" in m for m in msgs) and any("row 6: empty" in m for m in msgs)
    assert [(r.question, r.options, r.answer, r.category) for r in recs] == [
        ("What is shown?", ["glands", "nests", "follicles"], "B", "PubMed"),
        ("Diagnosis?", ["carcinoma", "adenoma"], "B", ""),
        ("Which?", ["Hyperplastic polyp", "Tubular adenoma", "Serrated lesion"], "C", ""),
        ("Stain?", ["H&E", "PAS"], "A", "")]
    assert all(r.kind == "mcq" and len(r.images) == 1 for r in recs) and _shape(recs[1].images[0]) == (4, 7, 3)


@pytest.mark.parametrize("row, message", [
    ({"options": ["a", "b"], "answer": "C"}, r"row 1: answer 'C' is neither a letter A..B nor the text"),
    ({"options": ["a", "b"], "answer": "c"}, r"row 1: answer 'c'"),
    ({"options": ["a", "b"], "answer": "A or B"}, r"row 1: answer 'A or B'"),
    ({"options": {"A": "a", "C": "c"}, "answer": "A"}, "row 1: option letters"),
    ({"options": "a|b", "answer": "A"}, "row 1: 'options' is neither"),
    ({"options": ["a"], "answer": "A"}, "row 1: 1 options"),
    ({"answer": "A"}, "row 1: no 'options'"),
])
def test_mcq_bad_rows(images, row, message):
    with pytest.raises(UserError, match=f"mcq.json: {message}"):
        import_mcq_json(_write(images / "mcq.json", [{"img": "img/a.png", "question": "Q?", **row}]))


def test_split_vl_records():
    recs = [VLRecord("mcq", source=f"img-{i // 2}", category="ab"[i % 2]) for i in range(40)]
    splits = split_vl_records(recs, (0.6, 0.2, 0.2), seed=3)
    assert sum(map(len, splits.values())) == 40 and all(splits.values())
    where = {r.source: s for s, v in splits.items() for r in v}
    assert all(where[r.source] == s for s, v in splits.items() for r in v)  # an image's records stay together
    assert split_vl_records(recs, (0.6, 0.2, 0.2), seed=3) == splits


# ---------------------------------------------------------------- demo corpus

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from data_prep.demo.corpus import generate_demo_corpus
    from data_prep.image_text import demo_tile_captions
    from pathreasoner_jax.config import load_config
    root = tmp_path_factory.mktemp("vldemo")
    # 3 slides per class, so every class has a train, a val and a test slide
    generate_demo_corpus(str(root / "cache" / "corpus-s0-n12"), 12, 0, sizes=(256, 512))
    overrides = [f"data.cache_dir={root / 'cache'}", "data.demo_num_slides=12", "data.demo_seed=0",
                 f"run.root={root / 'runs'}", "run.progress=false", "clip.demo_tiles_per_slide=2",
                 "clip.demo_tile_size=32", "clip.splits=[0.4,0.3,0.3]"]
    cfg = load_config(None, overrides + ["run.seed=0"])
    return cfg, load_config(None, overrides + ["run.seed=1"]), demo_tile_captions(cfg), root


def test_demo_vl_corpus(demo):
    from data_prep.demo.corpus import CLASS_INFO
    from data_prep.demo.synth import CLASSES
    cfg, cfg_seed1, tiles, _ = demo
    splits, names = tiles
    corpus = demo_vl_corpus(cfg, tiles)
    assert set(corpus) == {"caption", "sft", "mcq"}
    for stage in corpus:
        assert {k: len(v) for k, v in corpus[stage].items()} == {k: len(v) for k, v in splits.items()}
    assert sum(map(len, splits.values())) == 24 and all(splits.values())
    for split, tile_recs in splits.items():
        for t, cap, sft, mcq in zip(tile_recs, corpus["caption"][split], corpus["sft"][split], corpus["mcq"][split]):
            assert cap.kind == "caption" and cap.caption == t.caption and cap.images == [t.image_png]
            assert {r.source for r in (cap, sft, mcq)} == {t.source} and {r.label for r in (cap, sft, mcq)} == {t.label}
            # the MCQ: 4 different demo diagnoses, the answer letter at the true one
            assert len(mcq.options) == 4 and len(set(mcq.options)) == 4 and set(mcq.options) <= set(names)
            assert mcq.options[LETTERS.index(mcq.answer)] == names[t.label] == t.class_name
            assert mcq.category == CLASS_INFO[CLASSES[t.label]][2][0] == cap.category
            # the SFT conversation: the same question, a formatted CoT ending in the same letter
            user, assistant = (turn["content"] for turn in sft.conversation)
            assert user == "<image>\n" + mcq_prompt(mcq.question, mcq.options)
            assert is_format_compliant(assistant) and extract_letter(assistant, 4, mcq.options) == mcq.answer
            assert names[t.label] in assistant.split("<think>")[1]
    letters = [r.answer for v in corpus["mcq"].values() for r in v]
    assert len(set(letters)) > 1  # the shuffle moves the answer around
    # deterministic in run.seed (and the tiles); another seed shuffles differently
    assert demo_vl_corpus(cfg, tiles) == corpus
    other = demo_vl_corpus(cfg_seed1, tiles)
    assert [r.options for v in other["mcq"].values() for r in v] != [r.options for v in corpus["mcq"].values() for r in v]


def test_build_vl_data(demo, tmp_path):
    cfg, _, tiles, _ = demo
    corpus = demo_vl_corpus(cfg, tiles)
    out = build_vl_data(str(tmp_path), corpus, {"source": "demo"})
    assert set(out) == {"caption", "sft", "mcq"}
    for stage, kind in (("caption", "caption"), ("sft", "conversation"), ("mcq", "mcq")):
        store = VLStore(str(tmp_path / stage))
        assert store.meta == {"source": "demo", "stage": stage, "kind": kind}
        assert store.counts == {k: len(v) for k, v in corpus[stage].items()}
        assert store.kinds["train"] == {kind: len(corpus[stage]["train"])}
        assert store.split("train")[1] == corpus[stage]["train"][1]

    def never():
        raise AssertionError("complete stores are not rebuilt")
    assert build_vl_data(str(tmp_path), never) == out
    again = build_vl_data(str(tmp_path), {"mcq": {"train": corpus["mcq"]["train"][:3]}}, force=True)
    assert set(again) == {"mcq"} and VLStore(str(tmp_path / "mcq")).counts == {"train": 3}
    with pytest.raises(UserError, match=r"a 'caption' record .* in the sft/train split \(sft holds conversation\)"):
        build_vl_data(str(tmp_path / "x"), {"sft": {"train": corpus["caption"]["train"]}})
    with pytest.raises(UserError, match="unknown stage"):
        build_vl_data(str(tmp_path / "y"), {"grpo": {}})


def test_demo_tiles_at_two_scales(demo):
    """A ×2 tile covers twice the field of view, downsampled to the same size: it matches a
    box-filtered 2× region of level 0 (the same tissue, half the resolution)."""
    from data_prep.image_text import _slide_tiles
    cfg, _, (splits, _), root = demo
    path = str(root / "cache" / "corpus-s0-n12" / "slides" / "demo-000.tiff")
    one = _slide_tiles(path, 32, 2, np.random.default_rng(0), 1)
    two = _slide_tiles(path, 32, 2, np.random.default_rng(0), 2)
    assert all(t.shape == (32, 32, 3) for _, t in one + two)
    from pathreasoner_jax.slides.reader import open_slide
    slide = open_slide(path)
    try:
        (x, y), tile = two[0]
        boxes = [np.asarray(slide.read_region((x + d, y), 0, (64, 64)).convert("RGB"), np.float32)
                 .reshape(32, 2, 32, 2, 3).mean((1, 3)) for d in (0, 64)]
    finally:
        slide.close()
    same, shifted = (np.abs(b - tile.astype(np.float32)).mean() for b in boxes)
    assert same < 12.0 and same < shifted  # bicubic vs box filter of the same region; not of its neighbour
