"""Record schema (msgpack, no pickle), trajectory formatting/spans, the reference
conversation import (<info> → <observe>), and the pseudo-bag prior formula by hand."""
import math

import msgpack
import numpy as np
import pytest

from pathreasoner_jax.records import (SampleRecord, SlideRecord, decode_sample, decode_slide, encode_sample,
                                      encode_slide, format_trajectory, parse_trajectory, trajectory_spans)


def test_slide_record_roundtrip_is_plain_msgpack():
    rng = np.random.default_rng(0)
    rec = SlideRecord("s1", rng.normal(size=(3, 4)).astype(np.float32), np.array([[0, 0], [256, 0], [0, 256]]),
                      np.array([0, 1, 1]), magnification=20.0, source="/x/s1.svs", label="scc",
                      patch_size=256, patch_size_level0=512)
    data = encode_slide(rec)
    raw = msgpack.unpackb(data, raw=False)  # any msgpack reader sees dtype/shape/bytes, no pickle
    assert raw["features"]["dtype"] == "<f4" and raw["features"]["shape"] == [3, 4]
    assert raw["coords"]["dtype"] == "<i8" and raw["cluster_ids"]["dtype"] == "<i4"
    back = decode_slide(data)
    np.testing.assert_array_equal(back.features, rec.features)
    np.testing.assert_array_equal(back.coords, rec.coords)
    assert back.coords.dtype == np.int64 and back.cluster_ids.dtype == np.int32
    assert (back.slide_id, back.label, back.patch_size_level0, back.source) == ("s1", "scc", 512, "/x/s1.svs")
    with pytest.raises(ValueError, match="disagree"):
        SlideRecord("bad", np.zeros((2, 4)), np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="expected 'sample'"):
        decode_sample(data)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_feature_storage_halves_the_record_and_rounds_like_the_dtype(dtype):
    import ml_dtypes
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(300, 64)).astype(np.float32)
    rec = SlideRecord("s", feats, np.zeros((300, 2)), np.zeros(300))
    full, half = encode_slide(rec), encode_slide(rec, dtype)
    assert len(full) - len(half) >= 300 * 64 * 2 - 16  # the features: 2 bytes each instead of 4
    raw = msgpack.unpackb(half, raw=False)
    assert raw["features"]["dtype"] == {"float16": "<f2", "bfloat16": "bfloat16"}[dtype]
    assert len(raw["features"]["data"]) == 300 * 64 * 2
    back = decode_slide(half)
    want = feats.astype({"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype])
    assert back.features.dtype == want.dtype  # kept 16-bit in memory until rows are picked
    np.testing.assert_array_equal(back.features.astype(np.float32), want.astype(np.float32))
    # bfloat16 keeps float32's exponent and 8 mantissa bits: relative error ≤ 2⁻⁸
    err = np.abs(back.features.astype(np.float32) - feats) / np.abs(feats)
    assert err.max() <= (2.0 ** -8 if dtype == "bfloat16" else 2.0 ** -11)
    # a batch built from it is float32, as from a float32 store
    batch = np.zeros((1, 300, 64), np.float32)
    batch[0, :] = back.features[np.arange(300)]
    np.testing.assert_array_equal(batch[0], want.astype(np.float32))


def test_sample_record_roundtrip_and_validation():
    s = SampleRecord("s1::0", "s1", "train", "<image>\nWhat is it?", ["f1.", "f2."], ["r1.", "r2."], "dx",
                     "dx", ["a", "b"], "diagnosis")
    assert decode_sample(encode_sample(s)) == s
    with pytest.raises(ValueError, match="exactly one"):
        SampleRecord("x", "s", "train", "<image> and <image>", [], [], "a")
    with pytest.raises(ValueError, match="split"):
        SampleRecord("x", "s", "dev", "<image>", [], [], "a")


def test_format_trajectory_and_step_spans():
    text = format_trajectory(["Finding one.", "Finding\ntwo."], ["Step one.", "Step two."], "the answer")
    assert text == ("<observe>\nFinding one.\nFinding two.\n</observe>\n<think>\nStep one.\nStep two.\n"
                    "</think>\n<answer>the answer</answer>")
    t2, spans = trajectory_spans(["Finding one.", "Finding two."], ["Step one.", "Step two."], "the answer")
    assert t2 == text
    assert [(k, i, text[s:e]) for k, i, s, e in spans] == [
        ("finding", 0, "Finding one."), ("finding", 1, "Finding two."), ("reasoning", 0, "Step one."),
        ("reasoning", 1, "Step two."), ("answer", 0, "the answer")]
    assert parse_trajectory(text) == (["Finding one.", "Finding two."], ["Step one.", "Step two."], "the answer")


def test_reference_import_maps_info_to_observe(shared_dir):
    import os
    from data_prep.reference import import_conversations
    path = os.path.join(shared_dir, "reference-format", "llava_conversations_example.json")
    samples, failures = import_conversations(path)
    assert failures == [] and len(samples) == 11
    s = samples[0]
    assert s.sample_id == "train::0" and s.split == "train" and s.category == "reference"
    assert s.slide_id == "TCGA-GV-A40G-01Z-00-DX1.AD1A709F-A10C-4E69-B4ED-6361777361FD"
    assert s.question.count("<image>") == 1 and "<info>" not in s.question and "<observe>" in s.question
    assert s.findings[0].startswith("The tumor is noted to invade the muscularis propria")
    assert not any("Histopathological Findings" in f for f in s.findings)
    assert len(s.findings) > 3 and len(s.reasoning) > 3 and s.answer
    assert "<info>" not in s.trajectory and s.trajectory.startswith("<observe>\n")


def test_reference_import_bad_items(tmp_path):
    import json
    from data_prep.reference import import_conversations
    p = tmp_path / "conv.json"
    p.write_text(json.dumps([{"id": "test::1", "image": "/a/b/slide9.h5", "conversations": [
        {"from": "human", "value": "<image>\nDiagnose."},
        {"from": "gpt", "value": "<info>f</info><think>t</think><answer>a</answer>"}]},
        {"id": "train::2", "image": "x.h5", "conversations": [{"from": "human", "value": "hi"},
                                                            {"from": "gpt", "value": "no tags here"}]}]))
    samples, failures = import_conversations(str(p))
    assert [(s.sample_id, s.split, s.slide_id, s.findings) for s in samples] == [("test::1", "test", "slide9", ["f"])]
    assert failures[0]["sample"] == "train::2" and "observe" in failures[0]["error"]


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_pseudo_bag_prior_formula_by_hand():
    from pathreasoner_jax.sft.prior import pseudo_bag_prior
    delta, sizes = [1.0, 0.0, 2.0, 5.0], [10, 50, 40, 1]
    # N = 101, ⌊0.02·101⌋ = 2 → cluster 3 (1 patch) is not eligible
    p = np.asarray(pseudo_bag_prior(delta, sizes, mu=0.7, tau=1.0, eps=0.02))
    sm = _softmax([1.0, 0.0, 2.0])
    want = [0.7 * sm[i] + 0.3 / 3 for i in range(3)] + [0.0]
    np.testing.assert_allclose(p, want, rtol=1e-6)
    assert p.sum() == pytest.approx(1.0)
    p = np.asarray(pseudo_bag_prior(delta, sizes, mu=0.5, tau=2.0, eps=0.0))  # all eligible (≥ 1)
    sm = _softmax([0.5, 0.0, 1.0, 2.5])
    np.testing.assert_allclose(p, [0.5 * s + 0.5 / 4 for s in sm], rtol=1e-6)
    p = np.asarray(pseudo_bag_prior([3.0, 1.0], [1, 1], mu=0.7, tau=1.0, eps=0.9))  # ⌊1.8⌋ = 1: both eligible
    sm = _softmax([3.0, 1.0])
    np.testing.assert_allclose(p, [0.7 * sm[0] + 0.15, 0.7 * sm[1] + 0.15], rtol=1e-6)
    p = np.asarray(pseudo_bag_prior([1.0, 2.0], [0, 0], eps=0.02))
    np.testing.assert_array_equal(p, [0.0, 0.0])
