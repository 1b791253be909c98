"""Output files a person reads: the self-contained `report.html` of `pathreasoner infer` and
the `metrics.md` / `metrics.json` of `pathreasoner eval`.

`report.html` opens offline: it references only files in its own folder (relative, URL-
quoted names) or embeds images as `data:` URIs; no scripts, no fonts, no network. Every
piece of text is HTML-escaped. All files are written atomically (temp name + os.replace).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import shutil
import urllib.parse
from typing import Any, Mapping, Optional, Union

import numpy as np
from PIL import Image

from pathreasoner_jax.core.io import atomic_path, write_bytes, write_json, write_text
from pathreasoner_jax.eval.entities import as_lexicon
from pathreasoner_jax.eval.metrics import METRIC_KEYS
from pathreasoner_jax.text.spans import extract_answer, extract_span, full_text

ImageLike = Union[str, bytes, Image.Image, np.ndarray]

__all__ = ["write_report", "write_metrics_md", "write_metrics_json", "entity_slug"]


def entity_slug(name: str) -> str:
    """A file- and anchor-safe name for an entity: "Lung adenocarcinoma" → "lung-adenocarcinoma"."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "entity"


# ---------------------------------------------------------------- images

def _png_bytes(image: Union[bytes, Image.Image, np.ndarray]) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _place_image(image: ImageLike, out_dir: str, default_name: str, embed: bool) -> str:
    """Return the `src` for an image: a data: URI (embed), or a URL-quoted file name in
    `out_dir` (a file elsewhere is copied in; an in-memory image is written as PNG)."""
    if isinstance(image, str):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"report image not found: {image}")
        if embed:
            mime = "image/png" if image.lower().endswith(".png") else "image/jpeg"
            with open(image, "rb") as f:
                return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"
        name = os.path.basename(image)
        if os.path.abspath(os.path.dirname(image)) != os.path.abspath(out_dir):
            # Copied under our own name: two source folders may both hold a "heatmap.png".
            name = os.path.splitext(default_name)[0] + os.path.splitext(image)[1].lower()
            target = os.path.join(out_dir, name)
            with atomic_path(target) as tmp:
                shutil.copyfile(image, tmp)
        return urllib.parse.quote(name)
    data = _png_bytes(image)
    if embed:
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    write_bytes(os.path.join(out_dir, default_name), data)
    return urllib.parse.quote(default_name)


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
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.answer{font-size:1.15em;background:#eef6ee;border-left:4px solid #3a3;padding:.6em 1em}
.span{white-space:pre-wrap;line-height:1.5}
mark.entity{background:#ffe8a3;padding:0 .15em;border-radius:3px}mark.entity a{color:inherit}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:480px;border:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em}
"""


def write_report(out_dir: str, *, question: str, completion: str, answer: Optional[str] = None,
                 thumbnail: Optional[ImageLike] = None,
                 heatmaps: Optional[Mapping[str, ImageLike]] = None,
                 lexicon=None, provenance: Optional[Mapping[str, Any]] = None,
                 title: str = "PathReasoner report", embed_images: bool = False) -> str:
    """Write `out_dir/report.html` and return its path.

    question / completion: the user's question and the model's decoded completion (tags kept).
    answer: shown as the answer; default `extract_answer(completion)`.
    thumbnail: slide thumbnail (file path, PNG bytes, PIL image or (H, W, 3) uint8 array).
    heatmaps: {canonical entity name: image like `thumbnail`} — one evidence map per entity.
    lexicon: `EntityLexicon` or entries, to highlight KG entities in the reasoning.
    provenance: {label: value} — model, checkpoint, config, data, slide, versions …
    embed_images: embed images as data: URIs instead of files next to report.html.
    Images given as files outside `out_dir` are copied into it (only relative names are used).
    """
    os.makedirs(out_dir, exist_ok=True)
    lex = as_lexicon(lexicon)
    heatmaps = dict(heatmaps or {})
    esc = html.escape

    observe, think = extract_span(completion, "observe"), extract_span(completion, "think")
    if observe is None and think is None:
        think = full_text(completion)
    answer = extract_answer(completion) if answer is None else answer

    body = [f"<h1>{esc(title)}</h1>", "<h2>Question</h2>", f'<p class="span">{esc(question)}</p>',
            "<h2>Answer</h2>", f'<p class="answer">{esc(answer)}</p>']
    if thumbnail is not None:
        src = _place_image(thumbnail, out_dir, "thumbnail.png", embed_images)
        body += ["<h2>Slide</h2>", f'<figure><img src="{esc(src)}" alt="slide thumbnail">'
                                   "<figcaption>Slide thumbnail</figcaption></figure>"]
    body.append("<h2>Reasoning</h2>")
    for label, span in (("Observation", observe), ("Reasoning", think)):
        if span is not None:
            body.append(f'<h3>{label}</h3><p class="span">{_highlight(span, lex, set(heatmaps))}</p>')

    if heatmaps:
        body.append("<h2>Evidence maps</h2><p>Share of the model's support for each entity that "
                    "each region carries (occlusion of pseudo-bag clusters); red = most.</p>")
        for name, image in heatmaps.items():
            slug = entity_slug(name)
            src = _place_image(image, out_dir, f"evidence_{slug}.png", embed_images)
            body.append(f'<figure id="ev-{slug}"><img src="{esc(src)}" alt="{esc(name, quote=True)}">'
                        f"<figcaption>{esc(name)}</figcaption></figure>")

    if provenance:
        rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in provenance.items())
        body.append(f"<h2>Provenance</h2><table>{rows}</table>")
    body.append(f"<h2>Raw completion</h2><details><summary>show</summary><pre>{esc(completion)}</pre></details>")

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
