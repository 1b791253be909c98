"""report.html: well-formed, offline (only its own folder or data: URIs), escaped; its answer box,
scale bar, colours and synthetic-slide evidence against hand-computed values; metrics.md."""
import base64
import html
import io
import os
import re
import urllib.parse
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import pathreasoner_jax
from pathreasoner_jax.eval.evidence import DIVERGING_CMAP, diverging_rgba
from pathreasoner_jax.eval.report import (
    DISCLAIMER, answer_status, clean_question, entity_slug, write_metrics_json, write_metrics_md, write_report)
from pathreasoner_jax.eval.report_images import EntityEvidence, colorbar_image, scale_bar
from report_fixtures import COMPLETION, LEXICON, build_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictChecker(HTMLParser):
    """Balanced tags, and every src/href/url() collected."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.refs, self.ids, self.tags, self.text = [], [], [], set(), [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data"):
                self.refs.append(value or "")
            if name == "id":
                self.ids.add(value)
            if name == "style" and value and "url(" in value:
                self.refs.append(value)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_page(out_dir):
    with open(os.path.join(out_dir, "report.html"), encoding="utf-8") as f:
        page = f.read()
    p = StrictChecker()
    p.feed(page)
    p.close()
    assert page.startswith("<!DOCTYPE html>")
    assert not p.errors and not p.stack, (p.errors, p.stack)
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered and "url(" not in lowered
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    for ref in p.refs:
        if ref.startswith("#"):
            assert ref[1:] in p.ids, ref  # in-page link to an existing anchor
        elif ref.startswith("data:"):
            assert ref.startswith("data:image/")
            Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1]))).verify()
        else:
            name = urllib.parse.unquote(ref)
            assert "/" not in name and "\\" not in name and not name.startswith("."), ref
            assert os.path.isfile(os.path.join(out_dir, name)), ref
    return page, p


def test_report_offline_files_escaped_and_linked(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (32, 24), (200, 180, 210)).save(elsewhere / "heat map.png")
    out = tmp_path / "out"
    path = write_report(
        str(out), question="Is this <script>alert(1)</script> & malignant?\n<image>", completion=COMPLETION,
        thumbnail=np.full((24, 32, 3), 220, np.uint8),
        evidence={"Adenocarcinoma": EntityEvidence(str(elsewhere / "heat map.png"), 1.0, {0: 1.0, 1: -0.5}),
                  "Necrosis": EntityEvidence(Image.new("RGB", (32, 24), (255, 0, 0)), 0.0, {0: 0.0})},
        lexicon=LEXICON, generated_at="2025-01-02T03:04:05+00:00",
        provenance={"model": "demo <tiny>", "checkpoint": "runs/demo/checkpoints/300", "slide": "CMU-1.svs"})
    assert path == str(out / "report.html")
    page, parser = check_page(str(out))
    text = "".join(parser.text)
    # escaped: shown as text, never as markup
    assert "<script>alert(1)</script>" in text and "<b>here</b>" in text and "demo <tiny>" in text
    assert "&lt;script&gt;" in page and "<image>" not in text and "&lt;image&gt;" not in page
    # reasoning entities highlighted; those with evidence maps link to them
    assert page.count('<mark class="entity"') == 4  # glands, necrosis, Glands, adenocarcinoma (answer: not)
    assert f'href="#ev-{entity_slug("Adenocarcinoma")}"' in page and 'href="#ev-necrosis"' in page
    assert "ev-gland-formation" not in page  # no evidence map for it → highlighted, not linked
    # images referenced from the folder itself
    assert set(os.listdir(out)) == {"report.html", "thumbnail.png", "evidence_adenocarcinoma.png",
                                    "evidence_necrosis.png", "colorbar.png"}
    assert "<|im_end|>" not in text.split("Raw completion")[0]
    assert DISCLAIMER in text and text.count("Reasoning") == 1 and '<p class="answer">Adenocarcinoma</p>' in page
    assert f'<span class="version">{pathreasoner_jax.__version__}</span>' in page
    assert '<time datetime="2025-01-02T03:04:05+00:00">' in page
    # no mpp → no scale bar, and the page says why
    assert 'class="scalebar"' not in page and 'id="no-scale"' in page
    # the sign is explained; an all-zero map says it shows no support
    assert "no positive support for Necrosis" in text and "1 of 2 regions support it" in text


def test_report_embedded_images_and_plain_completion(tmp_path):
    out = tmp_path / "emb"
    write_report(str(out), question="q", completion="Necrosis seen; adenocarcinoma.",
                 thumbnail=Image.new("RGB", (8, 8)),
                 evidence={"Necrosis": EntityEvidence(np.zeros((8, 8, 3), np.uint8), 0.2, {3: 0.2})},
                 lexicon=LEXICON, embed_images=True)
    page, parser = check_page(str(out))
    assert os.listdir(out) == ["report.html"]
    assert sum(r.startswith("data:image/png;base64,") for r in parser.refs) == 3  # thumbnail, colour bar, map
    assert 'href="#ev-necrosis"' in page
    assert '<div class="answer warn"' in page and '<p class="answer">' not in page  # no <answer> span


def test_missing_image_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(str(tmp_path), question="q", completion="c", thumbnail=str(tmp_path / "nope.png"))


@pytest.mark.parametrize("completion, ok, text, problem", [
    ("<think>x</think><answer> Adenocarcinoma </answer><|im_end|>", True, "Adenocarcinoma", ""),
    ("<think>x</think><answer>  </answer>", False, "", "empty"),
    ("<think>x</think><answer>Adeno", False, "Adeno", "stops inside"),
    ("<think>adenocarcinoma</think>", False, "", "no <answer>"),
    ("<|im_end|>", False, "", "the completion is empty"),
])
def test_answer_status_and_its_box(tmp_path, completion, ok, text, problem):
    status = answer_status(completion)
    assert (status.ok, status.text) == (ok, text) and problem in status.problem
    write_report(str(tmp_path), question="q", completion=completion)
    page, parser = check_page(str(tmp_path))
    assert ('<p class="answer">' in page) == ok and ('class="answer warn"' in page) == (not ok)
    if not ok:  # a visible warning naming the problem, escaped, never an empty green box
        assert "No valid answer" in "".join(parser.text) and html.escape(status.problem) in page


def test_clean_question():
    assert clean_question("What is it?\n<image>") == "What is it?"
    assert clean_question("<image>\nDescribe <image> the  slide.") == "Describe the  slide."
    assert clean_question("a <b> c") == "a <b> c"  # other text untouched (escaped when shown)


def _scalebar(page):
    m = re.search(r'class="scalebar" style="width:([0-9.]+)%" data-um="([0-9.]+)" data-px="([0-9.]+)">'
                  r"<span>([^<]+)</span>", page)
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), m.group(4)


@pytest.mark.parametrize("mpp, ds, width, um, label", [
    (0.25, 32.0, 1024, 1000, "1 mm"),    # 8 µm/px; ≤ 0.2·1024·8 = 1638 µm → 1 mm
    (0.5, 4.0, 300, 100, "100 µm"),      # 2 µm/px; ≤ 120 µm → 100 µm
    (0.2527, 16.0, 640, 500, "500 µm"),  # 4.0432 µm/px; ≤ 517.5 µm → 500 µm
])
def test_scale_bar_length_by_hand(tmp_path, mpp, ds, width, um, label):
    write_report(str(tmp_path), question="q", completion="<answer>a</answer>",
                 thumbnail=np.full((40, width, 3), 200, np.uint8), mpp=mpp, downsample=ds)
    page, _ = check_page(str(tmp_path))
    pct, got_um, px, got_label = _scalebar(page)
    expected_px = um / mpp / ds  # µm / (µm per level-0 px) / (level-0 px per thumbnail px)
    assert got_um == um and got_label == label
    assert px == pytest.approx(expected_px, abs=1e-4)
    assert pct == pytest.approx(100 * expected_px / width, abs=1e-4)
    assert f"{mpp:g} µm per level-0 pixel" in page
    assert scale_bar(None, ds, width) is None and scale_bar(0.0, ds, width) is None


def test_colour_of_zero_is_the_neutral_centre():
    import matplotlib

    cmap = matplotlib.colormaps[DIVERGING_CMAP]
    centre = np.asarray(cmap(0.5)[:3]) * 255
    assert np.ptp(centre) < 3 and centre.min() > 200  # a light neutral grey, not a hue
    bar = np.asarray(colorbar_image(width=257, height=4)).astype(int)
    np.testing.assert_array_equal(bar[:, 128], np.tile(np.round(centre), (4, 1)))
    np.testing.assert_array_equal(bar[0, 0], np.round(np.asarray(cmap(0.0)[:3]) * 255))   # −vmax
    np.testing.assert_array_equal(bar[0, -1], np.round(np.asarray(cmap(1.0)[:3]) * 255))  # +vmax
    assert bar[0, -1, 0] > bar[0, -1, 2] and bar[0, 0, 2] > bar[0, 0, 0]  # + red, − blue
    rgba = diverging_rgba(np.array([0.0, 2.0, -2.0, np.nan]), vmax=2.0)
    np.testing.assert_allclose(rgba[0, :3], centre)  # evidence 0 → the neutral centre, transparent
    np.testing.assert_allclose(rgba[:, 3], [0, 0.55, 0.55, 0])


def test_report_from_synthetic_slide_values_and_crops(tmp_path):
    # hand-computed from report_fixtures.DROPS: support 0.3 + 0.02 + 0.8, against −0.4 − 0.05 − 0.2
    path = build_report(str(tmp_path / "out"), str(tmp_path), from_slide=False)
    page, parser = check_page(os.path.dirname(path))
    text = " ".join(parser.text)
    assert '<td class="num">+1.120</td><td class="num">\u22120.650</td><td class="num">3 / 12</td>' in page
    # region 1 = cluster 5 (patch columns 4–7, rows 4–7): the typical patch is (5, 5) → (640, 640),
    # the 3 × 3-patch window starts one patch before it
    assert "#1 · cluster 5 · Δ = +0.800 nats (71% of the support)" in text
    assert "x = 512, y = 512, 384 × 384 px; outlined patch at (640, 640)" in text
    assert sorted(f for f in os.listdir(os.path.dirname(path)) if f.startswith("region_")) == [
        "region_adenocarcinoma_1.png", "region_adenocarcinoma_2.png", "region_adenocarcinoma_3.png"]
    assert "no positive support for Necrosis" in text and "<image>" not in text


def test_slide_crops_and_infer_slide_input(tmp_path):
    from types import SimpleNamespace

    import report_fixtures as fx
    from pathreasoner_jax.eval.infer import load_slide_input
    from pathreasoner_jax.eval.report_images import slide_crop_fn
    from pathreasoner_jax.slides.h5io import FeatureFile, write_features_h5

    level0 = fx.level0_image()
    tiff = fx.write_slide(str(tmp_path / "slide.tiff"), level0)
    import openslide
    with openslide.OpenSlide(tiff) as slide:
        crop = slide_crop_fn(slide)(512, 256, 384, 384, 128).astype(float)  # from pyramid level 1 (ds 2)
    by_hand = np.asarray(Image.fromarray(level0[256:640, 512:896]).resize((128, 128), Image.LANCZOS), float)
    assert np.abs(crop - by_hand).mean() < 8  # JPEG tiles and a different resampling path
    # a feature file whose source slide exists: thumbnail, mpp and crops come from the slide
    coords, clusters = fx.patch_grid()
    feats = np.zeros((len(coords), 4), np.float32)
    rt = SimpleNamespace(cfg=SimpleNamespace(data=SimpleNamespace(patch_size=128, num_clusters=12)),
                         model_cfg=SimpleNamespace(slide=SimpleNamespace(feature_dim=4)))
    for source, mpp, image_path in ((tiff, fx.MPP, tiff), (str(tmp_path / "gone.tiff"), None, None)):
        h5 = str(tmp_path / "f.h5")
        write_features_h5(h5, FeatureFile(feats, coords, {"patch_size_level0": 128, "source_path": source}, clusters))
        si = load_slide_input(rt, h5)
        assert si.mpp == (pytest.approx(mpp) if mpp else None) and si.image_path == image_path
        assert max(si.thumbnail.shape[:2]) in (1024, 1025) and si.patch_size0 == 128
        assert (si.thumbnail.std() > 10) == bool(mpp)  # the slide's tissue, or a blank canvas


def test_infer_strict_exits_2_on_a_malformed_answer(tmp_path, monkeypatch, capsys):
    import pathreasoner_jax.eval.cli as eval_cli
    import pathreasoner_jax.eval.infer as infer_mod
    import pathreasoner_jax.runtime as runtime
    from pathreasoner_jax.cli import main

    slide = tmp_path / "s.h5"
    slide.write_bytes(b"")
    monkeypatch.setattr(eval_cli, "load_config", lambda *a: None)
    monkeypatch.setattr(runtime, "setup", lambda cfg: None)
    monkeypatch.setattr(infer_mod, "infer", lambda rt, s, q, out: {
        "answer": "", "answer_ok": False, "answer_problem": "the completion has no <answer>…</answer> span"})
    argv = ["infer", "--config", "c.yaml", "--slide", str(slide), "--question", "q?", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "warning: no valid answer" in capsys.readouterr().err
    assert main(argv + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert "warning: no valid answer" in err and "--strict" in err


def test_metrics_md_and_json(tmp_path):
    metrics = {"n": 3, "answer_accuracy": 2 / 3, "bleu4": 0.25, "format_compliance": 1.0,
               "per_category": {"lung": {"n": 2, "answer_accuracy": 1.0}, "co|on": {"n": 1, "answer_accuracy": 0.0}},
               "slidebench": {"accuracy": 0.5, "predictions": ["A", None],
                              "per_category": {"Clinical": {"accuracy": 0.5, "n": 2}}}}
    md_path = write_metrics_md(metrics, str(tmp_path / "eval" / "metrics.md"))
    lines = open(md_path).read().splitlines()
    assert lines[0] == "# Evaluation metrics"
    assert "| format_compliance | 1.0000 |" in lines and "| answer_accuracy | 0.6667 |" in lines
    assert "| bleu4 | 0.2500 |" in lines and "| n | 3 |" in lines
    # per-category table: one row per category, columns in metric order
    assert "| category | answer_accuracy | n |" in lines
    assert "| lung | 1.0000 | 2 |" in lines and "| co\\|on | 0.0000 | 1 |" in lines
    assert "| Clinical | 0.5000 | 2 |" in lines and "## slidebench" in lines
    assert not any("predictions" in line for line in lines)
    json_path = write_metrics_json({"a": np.float32(0.5), "b": float("nan"), "c": (1, 2)}, str(tmp_path / "m.json"))
    import json
    assert json.load(open(json_path)) == {"a": 0.5, "b": None, "c": [1, 2]}
    assert sorted(os.listdir(tmp_path / "eval")) == ["metrics.md"]  # no temp files left behind


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_infer_end_to_end_writes_the_report(tmp_path):
    """Tiny SFT, then `infer` on a feature h5 whose source slide exists: the report has the
    slide's thumbnail and scale bar; a malformed answer warns, and fails only with --strict."""
    import json
    import subprocess
    import sys

    import report_fixtures as fx
    from pathreasoner_jax.slides.h5io import FeatureFile, write_features_h5
    from sft_fixtures import make_dataset, make_tokenizer, write_prep_dir

    make_tokenizer(str(tmp_path / "tok"))
    train, slides = make_dataset(4)
    write_prep_dir(str(tmp_path / "prep"), {"train": train, "test": train}, slides, str(tmp_path / "tok"))
    tiff = fx.write_slide(str(tmp_path / "slide.tiff"), fx.level0_image())
    coords, clusters = fx.patch_grid()
    feats = np.random.default_rng(0).normal(size=(len(coords), 16)).astype(np.float32)
    h5 = str(tmp_path / "f.h5")
    write_features_h5(h5, FeatureFile(feats, coords, {"patch_size_level0": fx.PATCH, "source_path": tiff},
                                      clusters % 4))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cfg = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_like.yaml")
    common = ["--config", cfg, f"run.root={tmp_path}", f"data.prep_dir={tmp_path / 'prep'}"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pathreasoner_jax", *args, *common], capture_output=True,
                              text=True, env=env, timeout=600)
    assert cli("sft").returncode == 0
    out = tmp_path / "inf"
    p = cli("infer", "--slide", h5, "--question", "What is it?", "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    answer = json.loads((out / "answer.json").read_text())
    assert answer["mpp"] == pytest.approx(fx.MPP) and answer["question"] == "What is it?"
    page, _ = check_page(str(out))
    assert 'class="scalebar"' in page and DISCLAIMER in page
    assert ("warning: no valid answer" in p.stderr) == (not answer["answer_ok"])
    strict = cli("infer", "--slide", h5, "--question", "What is it?", "--out", str(out), "--strict")
    assert strict.returncode == (0 if answer["answer_ok"] else 2), strict.stderr[-2000:]
