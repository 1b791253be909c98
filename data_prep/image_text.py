"""`pathreasoner clip-data`: image–caption pairs for Patho-CLIP, written as an image–text store.

Sources, in order of preference:
- a Quilt/PathGen-style captions CSV (`image_path`, `caption`, optional `label` or
  `class_name`); rows are split train/val/test by image (every caption of one image in
  the same split), stratified by class, deterministic in run.seed;
- class folders (one sub-folder of images per class): with a CSV they are appended to the
  test split (the zero-shot set), alone they are split like the CSV;
- neither: tiles cut from the demo slides with captions written from the demo KG
  (class-specific findings, synonyms, the concept a finding indicates), split by slide.

Images are stored re-encoded as RGB PNG. An unreadable image is a warning naming the
file and row, and the row is skipped. Unless clip.tokenizer_path or clip.hf_path is set,
a small tokenizer is trained on the captions and the zero-shot prompts into
<data_dir>/tokenizer.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import sys

import numpy as np
from PIL import Image

from pathreasoner_jax.clip.preprocess import train_clip_tokenizer
from pathreasoner_jax.clip.records import ImageText, clip_data_dir, load_manifest, write_store
from pathreasoner_jax.config import load_config
from pathreasoner_jax.core.errors import UserError, one_line
from pathreasoner_jax.core.progress import track
from data_prep.splits import SPLIT_NAMES, assign_splits

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DEMO_VOCAB, CAPTIONS_VOCAB = 1024, 16384  # BPE vocab of the trained tokenizer (demo: ~100 distinct words)


def say(msg: str) -> None:
    print(f"pathreasoner clip-data: {msg}", file=sys.stderr, flush=True)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def load_png(path: str) -> bytes:
    """An image file → RGB PNG bytes; raises OSError/ValueError when it cannot be decoded."""
    with Image.open(path) as img:
        img.load()  # decode now: a truncated file fails here, not in the loader
        return png_bytes(img)


def _label_or_error(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{where}: label {value!r} is not an integer") from None


def import_caption_csv(csv_path: str, image_root: str = "") -> list[ImageText]:
    """CSV rows → ImageText (label from `label`, else −1; class_name from `class_name`).
    Relative image paths are taken against image_root, else the CSV's folder."""
    if not os.path.isfile(csv_path):
        raise UserError(f"{csv_path}: captions CSV not found")
    base = image_root or os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for col in ("image_path", "caption"):
            if col not in cols:
                raise UserError(f"{csv_path}: no {col!r} column (columns: {', '.join(cols) or 'none'})")
        rows = [(reader.line_num, row) for row in reader]
    out, skipped, cache = [], 0, {}
    for k, (line, row) in enumerate(track(rows, "clip-data: CSV images", unit="img"), 1):
        rel, caption = (row.get("image_path") or "").strip(), " ".join((row.get("caption") or "").split())
        where = f"{csv_path}: row {k} (line {line})"
        if not rel or not caption:
            log.warning("%s: empty image_path or caption; row skipped", where)
            skipped += 1
            continue
        path = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(base, rel))
        if path not in cache:
            try:
                cache[path] = load_png(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                log.warning("%s: image %s unreadable (%s); row skipped", where, path, one_line(e, 200))
                skipped += 1
                continue
        label = (row.get("label") or "").strip()
        out.append(ImageText(cache[path], caption, _label_or_error(label, where) if label else -1,
                             (row.get("class_name") or "").strip(), path))
    if skipped:
        log.warning("%s: %d of %d rows skipped (unreadable image or empty fields)", csv_path, skipped, len(rows))
    if not out:
        raise UserError(f"{csv_path}: no usable rows ({len(rows)} rows, {skipped} skipped)")
    return out


def import_class_folders(root: str) -> tuple[list[ImageText], list[str]]:
    """<root>/<class>/**/<image> → records (caption = class name, underscores as spaces)
    and the class names in label order (sorted folder names)."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: class folders root not found")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class sub-folders (one folder of images per class)")
    files = []
    for label, c in enumerate(classes):
        found = sorted(os.path.join(dp, fn) for dp, _, fns in os.walk(os.path.join(root, c)) for fn in fns
                       if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."))
        if not found:
            log.warning("%s: class folder without images", os.path.join(root, c))
        files += [(label, p) for p in found]
    names = [c.replace("_", " ") for c in classes]
    out, skipped = [], 0
    for label, path in track(files, "clip-data: class-folder images", unit="img"):
        try:
            out.append(ImageText(load_png(path), names[label], label, names[label], path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            log.warning("%s: unreadable image (%s); skipped", path, one_line(e, 200))
            skipped += 1
    if skipped:
        log.warning("%s: %d of %d images skipped", root, skipped, len(files))
    if not out:
        raise UserError(f"{root}: no readable images in the class folders")
    return out, names


# ------------------------------------------------------------------ demo tiles and captions

def demo_corpus(cfg) -> dict:
    """The demo corpus `prepare` uses (same cache folder), generated if absent; the CMU
    slide is neither fetched nor used (it has no class)."""
    from data_prep.demo.corpus import CORPUS_VERSION, generate_demo_corpus
    d = cfg.data
    n, seed = int(d.demo_num_slides), (d.demo_seed if d.demo_seed >= 0 else cfg.run.seed)
    out = os.path.join(d.cache_dir or os.path.join(".cache", "demo"), f"corpus-s{seed}-n{n}")
    marker = os.path.join(out, "corpus.json")
    if os.path.isfile(marker):  # any complete corpus of these slides (with or without CMU, any sizes)
        with open(marker) as f:
            done = json.load(f)
        if (done.get("version"), done.get("num_slides"), done.get("seed")) == (CORPUS_VERSION, n, seed):
            return done
    return generate_demo_corpus(out, n, seed, kg_path=_pathology_kg(cfg))


def _pathology_kg(cfg) -> str:
    """data.kg_path when it is a pathology graph (JSON/YAML), else "" (the demo KG)."""
    return cfg.data.kg_path if cfg.data.kg_format == "pathology" else ""


def caption_vocabulary(kg_path: str = "") -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(synonyms by name, concepts each finding `indicates` by name) from the pathology KG."""
    from data_prep.kg import DEMO_KG, load_pathology_graph
    kg = load_pathology_graph(kg_path or DEMO_KG)
    synonyms = {kg.name(n): list(kg.synonyms(n)) for n in kg.nodes()}
    concepts: dict[str, list[str]] = {}
    for h, t, rel in kg.graph.edges(data="relation"):
        if rel == "indicates" and kg.type(t) == "concept":
            concepts.setdefault(kg.name(h), []).append(kg.name(t))
    return synonyms, concepts


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]  # not str.capitalize: keep "SCC", "B-cell"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def demo_caption(cls: str, rng: random.Random, synonyms: dict, concepts: dict) -> str:
    """A caption of a tile of class `cls`: 2–3 of its findings (at least one no other class
    has), sometimes by a synonym, the diagnosis (or a synonym), sometimes the site or the
    concept the finding indicates, in one of several phrasings."""
    from data_prep.demo.corpus import CLASS_INFO
    dx, findings, sites, _ = CLASS_INFO[cls]
    shared = {f for c, info in CLASS_INFO.items() if c != cls for f in info[1]}
    first = rng.choice([f for f in findings if f not in shared])
    others = rng.sample([f for f in findings if f != first], rng.randint(1, 2))

    def surface(name):
        return rng.choice(synonyms[name]) if synonyms.get(name) and rng.random() < 0.3 else name

    s_first, s_others, dx_s, site = surface(first), [surface(f) for f in others], surface(dx), rng.choice(sites)
    chosen = [s_first] + s_others
    rng.shuffle(chosen)
    fs = _and(chosen)
    forms = [f"{dx_s}: {fs}.", f"H&E tile of {dx_s} from the {site} showing {fs}.",
             f"{fs} in {site} tissue, consistent with {dx_s}.", f"histology of {dx_s} with {fs}.",
             f"a {site} tile with {fs} ({dx_s})."]
    if concepts.get(first):
        forms.append(f"{s_first}, indicating {rng.choice(concepts[first])}, with {_and(s_others)}; {dx_s}.")
    return _cap(rng.choice(forms))


def _slide_tiles(path: str, size: int, k: int, rng: np.random.Generator,
                 scale: int = 1) -> list[tuple[tuple[int, int], np.ndarray]]:
    """k tissue tiles → [((x, y), (size, size, 3) uint8)]: regions of size·scale px read at
    level 0 and, for scale > 1, downsampled to size (a wider field of view, as a pathologist
    zooms out: PathReasoner-R1's "various image scales")."""
    from pathreasoner_jax.slides.reader import open_slide, slide_magnification
    from pathreasoner_jax.slides.tiling import plan_tiles, read_patch
    slide = open_slide(path)
    try:
        base, _ = slide_magnification(slide, path)
        # target = the base magnification: the grid is laid out and read at level 0
        plan = plan_tiles(slide, path, target_magnification=base, patch_size=size * scale, min_tissue=0.75)
        pick = np.sort(rng.choice(len(plan.coords), size=min(k, len(plan.coords)), replace=False))
        tiles = [((int(x), int(y)), read_patch(slide, plan, (x, y))) for x, y in plan.coords[pick]]
        if scale > 1:
            tiles = [(xy, np.asarray(Image.fromarray(t).resize((size, size), Image.BICUBIC))) for xy, t in tiles]
        return tiles
    finally:
        slide.close()


def demo_tile_captions(cfg, corpus: dict | None = None,
                       scales: tuple[int, ...] = (1,)) -> tuple[dict[str, list[ImageText]], list[str]]:
    """Tile–caption pairs from the demo slides → ({"train", "val", "test": [ImageText]},
    class names in label order). Splits are by slide (data_prep/splits.py, run.seed).
    `scales`: clip.demo_tiles_per_slide tiles at each field-of-view scale (`_slide_tiles`);
    a tile's source names its scale past 1 ("demo-003.tiff@448,224x2")."""
    from data_prep.demo.corpus import CLASS_INFO
    from data_prep.demo.synth import CLASSES
    from pathreasoner_jax.slides.reader import SlideError
    corpus = corpus or demo_corpus(cfg)
    c, seed = cfg.clip, int(cfg.run.seed)
    synonyms, concepts = caption_vocabulary(_pathology_kg(cfg))
    labels = {sid: cls for sid, cls in corpus["labels"].items() if cls in CLASSES}
    split_of = assign_splits(labels, tuple(c.splits), seed)
    out: dict[str, list[ImageText]] = {s: [] for s in SPLIT_NAMES}
    for i, sid in enumerate(track(sorted(labels), "clip-data: demo slides", enabled=cfg.run.progress, unit="slide")):
        cls, path = labels[sid], os.path.join(corpus["slides_dir"], sid + ".tiff")
        try:
            tiles = [(sc, t) for sc in scales
                     for t in _slide_tiles(path, int(c.demo_tile_size), int(c.demo_tiles_per_slide),
                                           np.random.default_rng([seed, i] if sc == 1 else [seed, i, sc]), sc)]
        except SlideError as e:
            log.warning("%s; slide skipped", e)
            continue
        for sc, ((x, y), tile) in tiles:
            where = f"{x},{y}" + (f"x{sc}" if sc > 1 else "")
            rng = random.Random(f"{seed}:{sid}:{where}")
            out[split_of[sid]].append(ImageText(png_bytes(Image.fromarray(tile)),
                                                demo_caption(cls, rng, synonyms, concepts), CLASSES.index(cls),
                                                CLASS_INFO[cls][0], f"{sid}.tiff@{where}"))
    return out, [CLASS_INFO[k][0] for k in CLASSES]


# ------------------------------------------------------------------ the command

def csv_class_names(recs: list[ImageText]) -> list[str]:
    """Class names in label order: by `label` where given (a label without a name is named
    by its number), else the sorted class_name values (labels then assigned)."""
    if any(r.label >= 0 for r in recs):
        named = {r.label: r.class_name for r in recs if r.label >= 0 and r.class_name}
        names = [named.get(i, str(i)) for i in range(max(r.label for r in recs) + 1)]
    else:
        names = sorted({r.class_name for r in recs if r.class_name})
        index = {n: i for i, n in enumerate(names)}
        for r in recs:
            r.label = index.get(r.class_name, -1)
    for r in recs:
        if r.label >= 0 and not r.class_name:
            r.class_name = names[r.label]
    return names


def relabel(recs: list[ImageText], names: list[str]) -> None:
    """Labels against another class list (by name, case and underscores ignored; −1: none)."""
    def key(s):
        return " ".join(s.replace("_", " ").lower().split())
    index = {key(n): i for i, n in enumerate(names)}
    for r in recs:
        r.label = index.get(key(r.class_name), -1) if r.class_name else -1


def split_by_source(recs: list[ImageText], fractions, seed: int) -> dict[str, list[ImageText]]:
    """train/val/test by image (source), stratified by class name (data_prep/splits.py)."""
    split_of = assign_splits({r.source: r.class_name for r in recs}, tuple(fractions), seed)
    out: dict[str, list[ImageText]] = {s: [] for s in SPLIT_NAMES}
    for r in recs:
        out[split_of[r.source]].append(r)
    return out


def build_records(cfg) -> tuple[dict[str, list[ImageText]], list[str], str]:
    """→ (splits, class names, what they came from: "csv", "class_folders", both, "demo")."""
    c, seed = cfg.clip, int(cfg.run.seed)
    if not (c.captions_csv or c.class_folders):
        splits, names = demo_tile_captions(cfg)
        return splits, names, "demo"
    folder, names = ([], [])
    if c.class_folders:
        folder, names = import_class_folders(c.class_folders)
    if not c.captions_csv:
        return split_by_source(folder, c.splits, seed), names, "class_folders"
    rows = import_caption_csv(c.captions_csv, c.image_root)
    if c.class_folders:
        relabel(rows, names)  # the zero-shot classes are the folders'
    else:
        names = csv_class_names(rows)
    splits = split_by_source(rows, c.splits, seed)
    splits["test"] += folder
    return splits, names, "csv+class_folders" if c.class_folders else "csv"


def build_clip_data(cfg, force: bool = False) -> int:
    """Library entry point of `clip-data` (tests call it directly); → exit code."""
    c = cfg.clip
    out = clip_data_dir(cfg)
    manifest = os.path.join(out, "manifest.json")
    if os.path.isfile(manifest) and not force:
        counts = load_manifest(out).get("counts", {})
        say(f"{out} already holds an image-text store ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
            f"skipping (--force rebuilds it)")
        return 0
    splits, names, source = build_records(cfg)
    if not splits.get("train"):
        raise UserError(f"clip-data: no training pairs (source {source}; counts "
                        f"{ {k: len(v) for k, v in splits.items()} }); add data or change clip.splits")
    if os.path.isfile(manifest):  # the store is incomplete from here until the new manifest
        os.remove(manifest)
    meta = {"source": source, "seed": int(cfg.run.seed), "split_fractions": list(c.splits), "tokenizer": ""}
    if source == "demo":
        meta.update(tile_size=int(c.demo_tile_size), tiles_per_slide=int(c.demo_tiles_per_slide))
    if not (c.tokenizer_path or c.hf_path):
        from pathreasoner_jax.clip.preprocess import load_clip_tokenizer
        texts = [r.caption for v in splits.values() for r in v] + [t.format(n) for t in c.templates for n in names]
        tok_dir = train_clip_tokenizer(texts, os.path.join(out, "tokenizer"),
                                       DEMO_VOCAB if source == "demo" else CAPTIONS_VOCAB)
        meta.update(tokenizer="tokenizer", vocab_size=len(load_clip_tokenizer(tok_dir)))
    write_store(out, splits, names, meta)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    say(f"wrote {out}: {counts} image-text pairs, {len(names)} classes ({source})"
        + (f"; tokenizer {os.path.join(out, 'tokenizer')} ({meta['vocab_size']} tokens)" if meta["tokenizer"] else ""))
    return 0


def run_clip_data(args) -> int:
    """`pathreasoner clip-data --config C [--force] [key=value ...]`."""
    logging.basicConfig(level=logging.WARNING, format="pathreasoner: %(levelname)s: %(message)s")
    cfg = load_config(args.config, list(getattr(args, "overrides", None) or []))
    return build_clip_data(cfg, force=bool(getattr(args, "force", False)))
