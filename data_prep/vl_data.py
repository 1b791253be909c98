"""Qwen2.5-VL data for Patho-R1's three stages: importers, the demo corpus, the stores.

Importers (→ lists of VLRecord, images re-encoded as RGB PNG):
- `import_llava_json`: LLaVA-style conversations (stage 2, SFT);
- `import_caption_csv_vl`: Quilt/PathGen-style captions CSV (stage 1, continued pretraining);
- `import_mcq_json`: PathMMU-style multiple-choice questions (stage 3, GRPO; evaluation).

Bad rows, as data_prep/image_text.py: a missing file, a file that is not a JSON list, a
missing column is a UserError naming the file. A row with a missing or unreadable image or
an empty text is a warning naming the file and the row, and the row is skipped (scraped
corpora have such gaps; one warning sums them up). A row that cannot be interpreted (not a
JSON object, an unknown speaker, options of the wrong type, an answer that is no option,
more `<image>` placeholders than images) is a UserError naming the file and the row: it
means the file is not in the format read here, and skipping would silently drop data.
No usable row at all is a UserError.

`demo_vl_corpus(cfg)` turns the demo tiles (data_prep/image_text.demo_tile_captions, split
by slide) into the three kinds; `build_vl_data(out_dir, corpus)` writes one store per stage:

    <out_dir>/caption/   caption records       (stage 1)
    <out_dir>/sft/       conversation records  (stage 2)
    <out_dir>/mcq/       mcq records           (stage 3 and MCQ evaluation)

each with train/val/test splits (pathreasoner_jax/vl/records.py).
"""
from __future__ import annotations

import json
import logging
import os
import random
from typing import Callable

from PIL import Image

from data_prep.image_text import import_caption_csv, load_png
from data_prep.splits import SPLIT_NAMES, assign_splits
from pathreasoner_jax.core.errors import UserError, one_line
from pathreasoner_jax.eval.metrics import normalize_answer
from pathreasoner_jax.vl.mcq import extract_letter, mcq_prompt
from pathreasoner_jax.vl.records import IMAGE_PLACEHOLDER, LETTERS, VLRecord, VLStore, validate, write_vl_store

log = logging.getLogger(__name__)
STAGES = {"caption": "caption", "sft": "conversation", "mcq": "mcq"}  # store folder → record kind
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DEMO_QUESTION = "What is the diagnosis?"
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# ---------------------------------------------------------------- shared helpers

def _read_json_list(path: str, what: str) -> list:
    if not os.path.isfile(path):
        raise UserError(f"{path}: {what} JSON not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable JSON ({one_line(e, 200)})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of {what} entries, got a {type(data).__name__}")
    return data


def _where(path: str, k: int, entry) -> str:
    rid = entry.get("id") if isinstance(entry, dict) else None
    return f"{path}: row {k}" + (f" (id {rid})" if rid not in (None, "") else "")


def _image_paths(entry: dict, keys: tuple[str, ...], where: str) -> list[str]:
    """The entry's image path(s) under the first present key: a str or a list of str."""
    value = next((entry[k] for k in keys if entry.get(k) not in (None, "", [])), [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: '{keys[0]}' is neither an image path nor a list of paths")
    return [v.strip() for v in value if v.strip()]


def _load_images(paths: list[str], base: str, cache: dict, where: str) -> tuple[list[bytes] | None, str]:
    """→ (PNG bytes per path, the first resolved path) or (None, "") after a warning when
    one cannot be read (the row is skipped). Relative paths are taken against `base`."""
    out, first = [], ""
    for rel in paths:
        path = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(base, rel))
        first = first or path
        if path not in cache:
            try:
                cache[path] = load_png(path)
            except _IMAGE_ERRORS as e:
                log.warning("%s: image %s unreadable (%s); row skipped", where, path, one_line(e, 200))
                return None, ""
        out.append(cache[path])
    return out, first


def _finish(path: str, out: list, rows: int, skipped: int) -> list:
    if skipped:
        log.warning("%s: %d of %d rows skipped (unreadable image or empty fields)", path, skipped, rows)
    if not out:
        raise UserError(f"{path}: no usable rows ({rows} rows, {skipped} skipped)")
    return out


# ---------------------------------------------------------------- importers

def import_llava_json(path: str, image_root: str = "") -> list[VLRecord]:
    """LLaVA JSON [{"id", "image": str | [str] (optional), "conversations": [{"from":
    "human"|"gpt"|"system", "value": str}]}] → conversation records (human → user, gpt →
    assistant). When the user turns hold fewer `<image>` placeholders than images, the
    missing ones are prepended to the first user turn ("<image>\\n", as LLaVA does); more
    placeholders than images is an error. source: the first image path (else "<path>#<row>").
    Relative image paths are taken against image_root, else the JSON's folder."""
    items = _read_json_list(path, "LLaVA conversation")
    base = image_root or os.path.dirname(os.path.abspath(path))
    out, skipped, cache = [], 0, {}
    for k, entry in enumerate(items, 1):
        where = _where(path, k, entry)
        if not isinstance(entry, dict):
            raise UserError(f"{where}: not a JSON object")
        convs = entry.get("conversations")
        if not isinstance(convs, list) or not convs:
            raise UserError(f"{where}: no 'conversations' list")
        turns = []
        for j, t in enumerate(convs):
            role = SPEAKERS.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
            if role is None or not isinstance(t.get("value"), str):
                raise UserError(f"{where}: turn {j} is not {{'from': human|gpt|system, 'value': str}}")
            turns.append({"role": role, "content": t["value"].strip()})
        if not all(t["content"] for t in turns):
            log.warning("%s: empty turn; row skipped", where)
            skipped += 1
            continue
        images, first = _load_images(_image_paths(entry, ("image", "images"), where), base, cache, where)
        if images is None:
            skipped += 1
            continue
        users = [t for t in turns if t["role"] == "user"]
        missing = len(images) - sum(t["content"].count(IMAGE_PLACEHOLDER) for t in users)
        if missing > 0 and users:
            users[0]["content"] = f"{IMAGE_PLACEHOLDER}\n" * missing + users[0]["content"]
        out.append(validate(VLRecord("conversation", images, conversation=turns,
                                     source=first or f"{path}#{k}"), where))
    return _finish(path, out, len(items), skipped)


def import_caption_csv_vl(path: str, image_root: str = "") -> list[VLRecord]:
    """Captions CSV (`image_path`, `caption`, optional `label`, `class_name`) → caption
    records: data_prep/image_text.import_caption_csv (same rules, messages and skipping),
    class_name → category, the image path → source."""
    out = []
    for r in import_caption_csv(path, image_root):
        out.append(validate(VLRecord("caption", [r.image_png], caption=r.caption, category=r.class_name,
                                     source=r.source, label=r.label), f"{path}: image {r.source}"))
    return out


def _options(raw, where: str) -> list[str]:
    """A list of option texts (a leading "A) " / "A. " / "(A) " label matching each one's
    position is dropped when every option has one), or a dict {"A": text, "B": …} with
    consecutive letters from A."""
    if isinstance(raw, dict):
        keys = sorted(str(k).strip().upper() for k in raw)
        if keys != list(LETTERS[:len(keys)]):
            raise UserError(f"{where}: option letters {sorted(raw)} are not A, B, C, … in sequence")
        by_key = {str(k).strip().upper(): v for k, v in raw.items()}
        raw = [by_key[k] for k in keys]
    if not isinstance(raw, list) or not all(isinstance(o, (str, int, float)) for o in raw):
        raise UserError(f"{where}: 'options' is neither a list of texts nor a {{letter: text}} map")
    opts = [" ".join(str(o).split()) for o in raw]
    labelled = [_drop_label(o, LETTERS[k]) for k, o in enumerate(opts)] if len(opts) <= len(LETTERS) else opts
    return labelled if all(a != b for a, b in zip(labelled, opts)) else opts


def _drop_label(text: str, letter: str) -> str:
    for form in (f"({letter})", f"{letter})", f"{letter}.", f"{letter}:"):
        if text[:len(form)].upper() == form and text[len(form):len(form) + 1] in (" ", ""):
            return text[len(form):].strip()
    return text


def _answer_letter(raw, options: list[str], where: str) -> str:
    """The answer as a letter: a letter ("B", "(B)", "B) text"), or an option's text."""
    text = " ".join(str(raw).split()) if isinstance(raw, (str, int)) else ""
    key = normalize_answer(text)
    hits = [k for k, o in enumerate(options) if key and normalize_answer(o) == key]
    if len(hits) == 1:  # the text first: an option may itself be one letter-like word
        return LETTERS[hits[0]]
    letter = extract_letter(f"<answer>{text}</answer>", len(options), options) if text else None
    if letter is None:
        raise UserError(f"{where}: answer {raw!r} is neither a letter A..{LETTERS[len(options) - 1]} "
                        f"nor the text of one of the {len(options)} options")
    return letter


def import_mcq_json(path: str, image_root: str = "") -> list[VLRecord]:
    """PathMMU-style JSON [{"img" | "image": path | [paths], "question", "options": [text] |
    {letter: text}, "answer": letter or option text, "category" (optional)}] → mcq records
    (answer as a letter; `<image>` placeholders in the question are removed: an MCQ's
    images go before its question). source: the first image path."""
    items = _read_json_list(path, "MCQ")
    base = image_root or os.path.dirname(os.path.abspath(path))
    out, skipped, cache = [], 0, {}
    for k, entry in enumerate(items, 1):
        where = _where(path, k, entry)
        if not isinstance(entry, dict):
            raise UserError(f"{where}: not a JSON object")
        question = " ".join(str(entry.get("question") or "").replace(IMAGE_PLACEHOLDER, " ").split())
        paths = _image_paths(entry, ("img", "image", "images"), where)
        if not question or not paths:
            log.warning("%s: empty question or image; row skipped", where)
            skipped += 1
            continue
        if "options" not in entry or "answer" not in entry:
            raise UserError(f"{where}: no 'options' or no 'answer'")
        options = _options(entry["options"], where)
        if not 2 <= len(options) <= len(LETTERS):
            raise UserError(f"{where}: {len(options)} options (an MCQ needs 2..{len(LETTERS)})")
        answer = _answer_letter(entry["answer"], options, where)
        images, first = _load_images(paths, base, cache, where)
        if images is None:
            skipped += 1
            continue
        out.append(validate(VLRecord("mcq", images, question=question, options=options, answer=answer,
                                     category=str(entry.get("category") or "").strip(), source=first), where))
    return _finish(path, out, len(items), skipped)


def split_vl_records(recs: list[VLRecord], fractions, seed: int) -> dict[str, list[VLRecord]]:
    """train/val/test by source (every record of one image in one split), stratified by
    category (data_prep/splits.py), deterministic in seed."""
    split_of = assign_splits({r.source: r.category for r in recs}, tuple(fractions), seed)
    out: dict[str, list[VLRecord]] = {s: [] for s in SPLIT_NAMES}
    for r in recs:
        out[split_of[r.source]].append(r)
    return out


# ---------------------------------------------------------------- the demo corpus

def _join(items: list[str], word: str = "and") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def caption_findings(caption: str, cls: str, synonyms: dict[str, list[str]]) -> list[str]:
    """The findings of class `cls` a caption names (the name or synonym it uses, in the KG's
    spelling), in the caption's order."""
    from data_prep.demo.corpus import CLASS_INFO
    low, found = caption.lower(), []
    for f in CLASS_INFO[cls][1]:
        for s in sorted({f, *synonyms.get(f, [])}, key=len, reverse=True):  # longest first: "atypical mitoses"
            at = low.find(s.lower())
            if at >= 0:
                found.append((at, s))
                break
    return [s for _, s in sorted(found)]


def demo_category(cls: str) -> str:
    """The class's primary tissue site (CLASS_INFO: "colon", "esophagus", "lymph node"), else the class."""
    from data_prep.demo.corpus import CLASS_INFO
    info = CLASS_INFO.get(cls)
    return info[2][0] if info and info[2] else cls


def demo_vl_corpus(cfg, tiles: tuple[dict, list[str]] | None = None,
                   shuffle_options: bool = True) -> dict[str, dict[str, list[VLRecord]]]:
    """The demo tiles → {"caption" | "sft" | "mcq": {"train" | "val" | "test": [VLRecord]}},
    one record of each kind per tile, in the tiles' split (by slide).

    mcq: "What is the diagnosis?" with the true diagnosis and 3 other demo classes as
    options, shuffled by a generator seeded from run.seed and the tile's source; category:
    `demo_category`. `shuffle_options` False: the options in the class order instead (the
    letter then names the class; `vl.demo_shuffle_options`). sft: the same question and
    options as one user turn ("<image>\\n" +
    vl.mcq.mcq_prompt), the assistant "<observe>findings the caption names</observe>
    <think>one sentence from them to the diagnosis</think><answer>letter</answer>".
    tiles: demo_tile_captions(cfg)'s result when the caller already has it."""
    from data_prep.demo.synth import CLASSES
    from data_prep.image_text import _pathology_kg, caption_vocabulary, demo_tile_captions
    splits, names = tiles if tiles is not None else demo_tile_captions(cfg, scales=tuple(cfg.vl.demo_tile_scales))
    synonyms, _ = caption_vocabulary(_pathology_kg(cfg))
    seed = int(cfg.run.seed)
    out = {stage: {s: [] for s in splits} for stage in STAGES}
    for split, recs in splits.items():
        for r in recs:
            cls, dx = CLASSES[r.label], names[r.label]
            rng = random.Random(f"{seed}:{r.source}:mcq")
            options = [dx] + rng.sample([n for n in names if n != dx], min(3, len(names) - 1))
            if shuffle_options:
                rng.shuffle(options)
            else:
                options.sort(key=names.index)
            letter, category = LETTERS[options.index(dx)], demo_category(cls)
            found = caption_findings(r.caption, cls, synonyms) or [r.caption.rstrip(".")]
            others = [o for o in options if o != dx]
            fs = _join(found)
            observe = f"The tile shows {fs}."
            think = (f"{fs[:1].upper() + fs[1:]} {'point' if len(found) > 1 else 'points'} to {dx} "
                     f"rather than {_join(others, 'or')}, which is option {letter}.")
            common = dict(images=[r.image_png], category=category, source=r.source, label=r.label)
            out["caption"][split].append(VLRecord("caption", caption=r.caption, **common))
            out["sft"][split].append(VLRecord("conversation", conversation=[
                {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{mcq_prompt(DEMO_QUESTION, options)}"},
                {"role": "assistant", "content": f"<observe>{observe}</observe><think>{think}</think>"
                                                 f"<answer>{letter}</answer>"}], **common))
            out["mcq"][split].append(VLRecord("mcq", question=DEMO_QUESTION, options=options, answer=letter,
                                              **common))
    return out


# ---------------------------------------------------------------- the stores

def build_vl_data(out_dir: str, corpus: dict | Callable[[], dict], meta: dict | None = None,
                  force: bool = False) -> dict[str, dict]:
    """Writes <out_dir>/{caption,sft,mcq}/ (VL stores) from corpus = {stage: {split: [VLRecord]}}
    (demo_vl_corpus's shape; a stage may be absent) → {stage: manifest}. A stage whose store
    is complete (manifest.json present) is kept unless force; corpus may be a callable, called
    only when some store is to be written (the demo tiles are then not cut for nothing).
    A record of another kind than its stage's is a UserError. meta: added to each manifest."""
    done = {}
    if not force:
        for stage in STAGES:
            if os.path.isfile(os.path.join(out_dir, stage, "manifest.json")):
                done[stage] = VLStore(os.path.join(out_dir, stage)).manifest  # a foreign/stale one: UserError
    if callable(corpus):
        if len(done) == len(STAGES):
            return done
        corpus = corpus()
    unknown = set(corpus) - set(STAGES)
    if unknown:
        raise UserError(f"build_vl_data: unknown stage(s) {sorted(unknown)} (stages: {', '.join(STAGES)})")
    out = {}
    for stage, kind in STAGES.items():
        if stage in done:
            out[stage] = done[stage]
            continue
        if stage not in corpus:
            continue
        splits = {split: list(recs) for split, recs in corpus[stage].items()}
        for split, recs in splits.items():
            bad = next((r for r in recs if getattr(r, "kind", None) != kind), None)
            if bad is not None:
                raise UserError(f"build_vl_data: a {getattr(bad, 'kind', type(bad).__name__)!r} record "
                                f"({getattr(bad, 'source', '')}) in the {stage}/{split} split ({stage} holds {kind})")
        out[stage] = write_vl_store(os.path.join(out_dir, stage), splits, {**(meta or {}), "stage": stage, "kind": kind})
    return out


# ---------------------------------------------------------------- the command

def imported_corpus(cfg) -> dict:
    """{stage store: {split: records}} from the configured importers (captions → caption,
    LLaVA conversations → sft, MCQs → mcq), split by source."""
    v, out = cfg.vl, {}
    for path, store, fn in ((v.captions_csv, "caption", import_caption_csv_vl), (v.llava_json, "sft", import_llava_json),
                            (v.mcq_json, "mcq", import_mcq_json)):
        if path:
            out[store] = split_vl_records(fn(path, v.image_root), v.splits, cfg.run.seed)
    return out


def run_vl_data(args) -> int:
    from pathreasoner_jax import distributed
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.run_layout import RunLayout
    cfg = load_config(args.config, args.overrides)
    distributed.initialize(cfg.mesh)
    v = cfg.vl
    out = RunLayout(cfg).vl_data_dir
    imported = bool(v.captions_csv or v.llava_json or v.mcq_json)
    if imported:
        corpus = lambda: imported_corpus(cfg)  # noqa: E731
    else:
        corpus = lambda: demo_vl_corpus(cfg, shuffle_options=v.demo_shuffle_options)  # noqa: E731
    done = build_vl_data(out, corpus, {"source": "import" if imported else "demo"}, force=args.force)
    for stage, m in sorted(done.items()):
        counts = ", ".join(f"{s} {c['count']}" for s, c in m["splits"].items())
        print(f"vl-data: {stage}: {counts} → {os.path.join(out, stage)}")
    return 0
