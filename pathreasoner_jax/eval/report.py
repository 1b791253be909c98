"""Output files a person reads: the self-contained `report.html` of `pathreasoner infer` and
the `metrics.md` / `metrics.json` of `pathreasoner eval`.

`report.html` opens offline: it references only files in its own folder (relative, URL-
quoted names) or embeds images as `data:` URIs; no scripts, no fonts, no network. Every
piece of text is HTML-escaped. All files are written atomically (temp name + os.replace).
The page: research-use disclaimer, question, answer (a warning box when the completion has
no usable <answer> span), thumbnail with a µm scale bar, reasoning with linked KG entities,
evidence maps (report_evidence.py), provenance, raw completion, version + UTC time footer.
"""
from __future__ import annotations

import datetime
import html
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from pathreasoner_jax.core.io import write_json, write_text
from pathreasoner_jax.eval.entities import as_lexicon
from pathreasoner_jax.eval.metrics import METRIC_KEYS
from pathreasoner_jax.eval.report_evidence import entity_slug, evidence_section, scale_note, scaled_figure
from pathreasoner_jax.eval.report_images import (
    EntityEvidence, ImageLike, colorbar_image, image_size, place_image, scale_bar)
from pathreasoner_jax.text.spans import extract_answer, extract_span, full_text, strip_end_tokens

__all__ = ["write_report", "write_metrics_md", "write_metrics_json", "entity_slug", "answer_status",
           "AnswerStatus", "clean_question", "DISCLAIMER"]

DISCLAIMER = "For research use only; not for clinical diagnosis."
_IMAGE_TOKEN = re.compile(r"[ \t]*<image>[ \t]*")


def clean_question(question: str) -> str:
    """The question as the user wrote it: the model's `<image>` placeholder removed."""
    return re.sub(r"\n{3,}", "\n\n", _IMAGE_TOKEN.sub(" ", question)).strip()


@dataclass(frozen=True)
class AnswerStatus:
    """ok: a non-empty <answer>…</answer> span; otherwise `problem` says what is wrong and
    `text` is what can still be shown (the partial answer, or "")."""
    ok: bool
    text: str
    problem: str = ""


def answer_status(completion: str) -> AnswerStatus:
    """Classify a completion's answer: complete and non-empty, empty, cut off, or missing."""
    text = strip_end_tokens(completion)
    span = extract_span(text, "answer")
    if span:
        return AnswerStatus(True, span)
    if span is not None:
        return AnswerStatus(False, "", "the <answer></answer> span is empty")
    if "<answer>" in text:
        return AnswerStatus(False, extract_answer(text), "the completion stops inside <answer> (no </answer>)")
    if not full_text(text):
        return AnswerStatus(False, "", "the completion is empty")
    return AnswerStatus(False, "", "the completion has no <answer>…</answer> span")


# ---------------------------------------------------------------- reasoning with entities

def _highlight(text: str, lexicon, linked: set) -> str:
    """Escaped text with KG entity mentions wrapped in <mark>; mentions of an entity that has
    an evidence map link to it."""
    parts, pos = [], 0
    for m in lexicon.find(text):
        parts.append(html.escape(text[pos:m.start]))
        label = html.escape(text[m.start:m.end])
        title = html.escape(f"{m.name} ({m.type})" if m.type else m.name, quote=True)
        if m.name in linked:
            label = f'<a href="#ev-{entity_slug(m.name)}">{label}</a>'
        parts.append(f'<mark class="entity" title="{title}">{label}</mark>')
        pos = m.end
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1.05em}
.disclaimer{background:#fff4e5;border:1px solid #e0a040;padding:.4em .8em;font-weight:600}
.answer{font-size:1.15em;background:#eef6ee;border-left:4px solid #3a3;padding:.6em 1em}
.answer.warn{background:#fff1f0;border-left-color:#c0392b}.warn-text{color:#a33}
.span{white-space:pre-wrap;line-height:1.5}.note{color:#555;font-size:.9em}
mark.entity{background:#ffe8a3;padding:0 .15em;border-radius:3px}mark.entity a{color:inherit}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#444;max-width:480px}
.scaled{position:relative;max-width:100%}.scaled img{display:block;width:100%;height:auto;border:1px solid #ccc}
.scalebar{position:absolute;left:10px;bottom:10px;height:5px;background:#000;outline:2px solid #fff}
.scalebar span{position:absolute;left:0;bottom:8px;white-space:nowrap;font-size:12px;background:rgba(255,255,255,.85);padding:0 3px}
.colorbar{width:320px;margin:.3em .5em}.colorbar img{display:block;width:100%;height:14px;border:1px solid #999}
.cb-labels{display:flex;justify-content:space-between;font-size:.8em}.cb-unit{text-align:center;font-size:.8em;color:#555}
.pos{color:#b40426}.neg{color:#3b4cc0}.crops{display:flex;flex-wrap:wrap}figure.crop figcaption{max-width:256px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}td.num{text-align:right}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em}
footer{margin-top:2em;border-top:1px solid #ddd;padding-top:.5em;font-size:.85em;color:#555}
"""


def _answer_html(status: AnswerStatus) -> str:
    if status.ok:
        return f'<p class="answer">{html.escape(status.text)}</p>'
    partial = f"<br>Partial answer: {html.escape(status.text)}" if status.text else ""
    return (f'<div class="answer warn" role="alert"><strong>No valid answer</strong>: '
            f"{html.escape(status.problem)}.{partial}</div>")


def _reasoning_html(completion: str, lex, linked: set) -> list[str]:
    """One "Reasoning" heading; the <observe> and <think> spans under their own names."""
    observe, think = extract_span(completion, "observe"), extract_span(completion, "think")
    if observe is None and think is None:
        think = full_text(completion)
    out = ["<h2>Reasoning</h2>"]
    for label, span in (("Findings (observe)", observe), ("Interpretation (think)", think)):
        if span is not None:
            out.append(f'<h3>{label}</h3><p class="span">{_highlight(span, lex, linked)}</p>')
    return out


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("pathreasoner-jax")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        from pathreasoner_jax import __version__
        return __version__


def _footer(generated_at: Optional[str]) -> str:
    when = generated_at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (f'<footer>PathReasoner-JAX <span class="version">{html.escape(_version())}</span> · generated '
            f'<time datetime="{html.escape(when)}">{html.escape(when)}</time> · '
            f'<span class="disclaimer-text">{html.escape(DISCLAIMER)}</span></footer>')


def write_report(out_dir: str, *, question: str, completion: str, answer: Optional[str] = None,
                 thumbnail: Optional[ImageLike] = None,
                 evidence: Optional[Mapping[str, EntityEvidence]] = None,
                 mpp: Optional[float] = None, downsample: float = 1.0,
                 lexicon=None, provenance: Optional[Mapping[str, Any]] = None,
                 title: str = "PathReasoner report", embed_images: bool = False,
                 generated_at: Optional[str] = None) -> str:
    """Write `out_dir/report.html` and return its path.

    question / completion: the user's question and the model's decoded completion (tags kept).
    answer: shown as the answer instead of the completion's <answer> span ("" = no answer).
    thumbnail: slide thumbnail (file path, PNG bytes, PIL image or (H, W, 3) uint8 array).
    evidence: {canonical entity name: EntityEvidence} (report_images.build_entity_evidence).
    mpp: the slide's µm per level-0 pixel (None: unknown → no scale bar, said on the page);
    downsample: level-0 pixels per thumbnail (and overlay) pixel.
    lexicon: `EntityLexicon` or entries, to highlight KG entities in the reasoning.
    provenance: {label: value} — model, checkpoint, config, data, slide, versions …
    embed_images: embed images as data: URIs instead of files next to report.html.
    generated_at: footer time (default: now, UTC ISO 8601).
    Images given as files outside `out_dir` are copied into it (only relative names are used).
    """
    os.makedirs(out_dir, exist_ok=True)
    evidence = dict(evidence or {})
    esc = html.escape
    status = answer_status(completion) if answer is None else AnswerStatus(
        bool(answer.strip()), answer.strip(), "" if answer.strip() else "the answer is empty")

    def place(image, name: str) -> str:
        return place_image(image, out_dir, name, embed_images)

    body = [f"<h1>{esc(title)}</h1>", f'<p class="disclaimer" id="disclaimer">{esc(DISCLAIMER)}</p>',
            "<h2>Question</h2>", f'<p class="span">{esc(clean_question(question))}</p>',
            "<h2>Answer</h2>", _answer_html(status)]
    if thumbnail is not None:
        width = image_size(thumbnail)[0]
        body += ["<h2>Slide</h2>", scaled_figure(place(thumbnail, "thumbnail.png"), "slide thumbnail",
                                                 "Slide thumbnail", scale_bar(mpp, downsample, width), 480),
                 scale_note(mpp)]
    body += _reasoning_html(completion, as_lexicon(lexicon), set(evidence))
    if evidence:
        body += evidence_section(evidence, place, place(colorbar_image(), "colorbar.png"), mpp, downsample)
    if provenance:
        rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in provenance.items())
        body.append(f"<h2>Provenance</h2><table>{rows}</table>")
    body.append(f"<h2>Raw completion</h2><details><summary>show</summary><pre>{esc(completion)}</pre></details>")
    body.append(_footer(generated_at))
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    return write_text(os.path.join(out_dir, "report.html"), page)


# ---------------------------------------------------------------- metrics files

def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, np.integer, np.floating)) or v is None


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{float(v):.4f}"
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


def _ordered(keys) -> list:
    # the SPEC §9 metrics in their usual order, then accuracy, the rest A–Z, counts last
    known = [k for k in METRIC_KEYS if k != "n"] + ["accuracy"]
    rank = {k: i for i, k in enumerate(known)}
    return sorted(keys, key=lambda k: (str(k) in ("n", "n_unparsed"), rank.get(k, len(rank)), str(k)))


def _render(d: Mapping, title: str, level: int) -> list[str]:
    lines = [f"{'#' * level} {title}", ""]
    scalars = {k: v for k, v in d.items() if _is_scalar(v)}
    if scalars:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(scalars[k])} |" for k in _ordered(scalars)]
        lines.append("")
    for key, value in d.items():
        if not isinstance(value, Mapping) or not value:
            continue  # lists (e.g. per-item predictions) belong in metrics.json, not a table
        if all(isinstance(v, Mapping) for v in value.values()):
            # {row: {column: value}} → one table, rows in order, columns in metric order
            cols = _ordered({c for row in value.values() for c, v in row.items() if _is_scalar(v)})
            lines += [f"{'#' * (level + 1)} {key}", "", "| " + " | ".join(["category", *map(_cell, cols)]) + " |",
                      "|" + "---|" * (len(cols) + 1)]
            lines += ["| " + " | ".join([_cell(r), *(_cell(row.get(c)) for c in cols)]) + " |"
                      for r, row in value.items()]
            lines.append("")
        else:
            lines += _render(value, str(key), level + 1)
    return lines


def write_metrics_md(metrics: Mapping[str, Any], path: str, title: str = "Evaluation metrics") -> str:
    """Write `metrics` as markdown tables: top-level numbers as metric | value, each
    {category: {metric: value}} mapping (e.g. per_category) as one row per category, other
    nested mappings as their own sections; lists are left out. Returns `path`."""
    return write_text(path, "\n".join(_render(metrics, title, 1)).rstrip() + "\n")


def write_metrics_json(metrics: Mapping[str, Any], path: str) -> str:
    """Write `metrics` as indented JSON (sorted keys), atomically. Returns `path`."""
    return write_json(path, metrics)
