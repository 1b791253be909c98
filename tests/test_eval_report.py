"""report.html: well-formed, offline (only its own folder or data: URIs), escaped; metrics.md."""
import base64
import io
import os
import urllib.parse
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from pathreasoner_jax.eval.report import entity_slug, write_metrics_json, write_metrics_md, write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
LEXICON = [{"name": "Adenocarcinoma", "type": "disease"},
           {"name": "Gland formation", "type": "finding", "synonyms": ["glands"]},
           {"name": "Necrosis", "type": "finding"}]
COMPLETION = ("<observe>Irregular glands & necrosis <b>here</b>.</observe>\n"
              "<think>Glands invading stroma suggest adenocarcinoma.</think>\n"
              "<answer>Adenocarcinoma</answer><|im_end|>")


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
        str(out), question="Is this <script>alert(1)</script> & malignant?", completion=COMPLETION,
        thumbnail=np.full((24, 32, 3), 220, np.uint8),
        heatmaps={"Adenocarcinoma": str(elsewhere / "heat map.png"),
                  "Necrosis": Image.new("RGB", (32, 24), (255, 0, 0))},
        lexicon=LEXICON,
        provenance={"model": "demo <tiny>", "checkpoint": "runs/demo/checkpoints/300", "slide": "CMU-1.svs"})
    assert path == str(out / "report.html")
    page, parser = check_page(str(out))
    text = "".join(parser.text)
    # escaped: shown as text, never as markup
    assert "<script>alert(1)</script>" in text and "<b>here</b>" in text and "demo <tiny>" in text
    assert "&lt;script&gt;" in page
    # reasoning entities highlighted; those with evidence maps link to them
    assert page.count('<mark class="entity"') == 4  # glands, necrosis, Glands, adenocarcinoma (answer: not)
    assert f'href="#ev-{entity_slug("Adenocarcinoma")}"' in page and 'href="#ev-necrosis"' in page
    assert "ev-gland-formation" not in page  # no evidence map for it → highlighted, not linked
    # images referenced from the folder itself
    assert set(os.listdir(out)) == {"report.html", "thumbnail.png", "evidence_adenocarcinoma.png",
                                    "evidence_necrosis.png"}
    assert "<|im_end|>" not in text.split("Raw completion")[0]


def test_report_embedded_images_and_plain_completion(tmp_path):
    out = tmp_path / "emb"
    write_report(str(out), question="q", completion="Necrosis seen; adenocarcinoma.",
                 thumbnail=Image.new("RGB", (8, 8)), heatmaps={"Necrosis": np.zeros((8, 8, 3), np.uint8)},
                 lexicon=LEXICON, embed_images=True)
    page, parser = check_page(str(out))
    assert os.listdir(out) == ["report.html"]
    assert sum(r.startswith("data:image/png;base64,") for r in parser.refs) == 2
    assert 'href="#ev-necrosis"' in page


def test_missing_image_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(str(tmp_path), question="q", completion="c", thumbnail=str(tmp_path / "nope.png"))


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
