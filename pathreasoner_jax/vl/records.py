"""Qwen2.5-VL records (Patho-R1's three stages) and their store.

A `VLRecord` is one training or evaluation example of one kind:

- "caption"      (stage 1, continued pretraining): images + caption;
- "conversation" (stage 2, SFT): images + chat turns, `<image>` placeholders in user turns;
- "mcq"          (stage 3, GRPO; MCQ evaluation): images + question, options, answer letter.

Images are PNG bytes, one per `<image>` placeholder, in order. Caption and MCQ texts carry
no placeholder: the prompt builder puts their images before the text. Records are msgpack
maps (versioned), never pickle. The store is clip/records.py's (`write_record_store`,
`RecordStore`) with its own format name, so it has the same layout and guarantees:

    manifest.json                      written last; lists splits, shards, counts per kind, meta
    <split>-00000.array_record ...     one record per chunk (random access)

`write_vl_store` validates every record as it writes it (a bad record: UserError naming
the split, the record index and its source; no manifest is written).
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Iterable

import msgpack

from pathreasoner_jax.clip.records import RECORDS_PER_SHARD, RecordStore, StoreFormat, write_record_store
from pathreasoner_jax.core.errors import UserError

FORMAT = "pathreasoner-vl"
FORMAT_VERSION = 1
KINDS = ("caption", "conversation", "mcq")
ROLES = ("system", "user", "assistant")
IMAGE_PLACEHOLDER = "<image>"
LETTERS = string.ascii_uppercase  # an MCQ has at most 26 options, lettered A..Z
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class VLRecord:
    """kind: one of KINDS; images: PNG bytes, one per `<image>` (caption / mcq: before the text);
    conversation: [{"role": "system"|"user"|"assistant", "content": str}]; answer: the MCQ
    letter ("A".."Z", within the options); category: an MCQ/eval grouping (organ, source
    benchmark) or the class name; source: where it came from (image path, "demo-003.tiff@x,y");
    label: class index (−1: none)."""
    kind: str
    images: list[bytes] = field(default_factory=list, repr=False)  # a record prints without its PNGs
    caption: str = ""
    conversation: list[dict] = field(default_factory=list)
    question: str = ""
    options: list[str] = field(default_factory=list)
    answer: str = ""
    category: str = ""
    source: str = ""
    label: int = -1


def encode(rec: VLRecord) -> bytes:
    return msgpack.packb({"v": FORMAT_VERSION, "kind": str(rec.kind), "images": [bytes(b) for b in rec.images],
                          "caption": str(rec.caption),
                          "conversation": [{"role": str(t["role"]), "content": str(t["content"])}
                                           for t in rec.conversation],
                          "question": str(rec.question), "options": [str(o) for o in rec.options],
                          "answer": str(rec.answer), "category": str(rec.category), "source": str(rec.source),
                          "label": int(rec.label)}, use_bin_type=True)


def decode(data: bytes) -> VLRecord:
    d = msgpack.unpackb(data, raw=False)
    if not isinstance(d, dict) or d.get("v") != FORMAT_VERSION or "kind" not in d:
        raise ValueError(f"not a VL record of format version {FORMAT_VERSION}")
    return VLRecord(kind=d["kind"], images=list(d.get("images", [])), caption=d.get("caption", ""),
                    conversation=[dict(t) for t in d.get("conversation", [])], question=d.get("question", ""),
                    options=list(d.get("options", [])), answer=d.get("answer", ""), category=d.get("category", ""),
                    source=d.get("source", ""), label=int(d.get("label", -1)))


VL = StoreFormat(FORMAT, FORMAT_VERSION, "VL", encode, decode,
                 "build it with build_vl_data, data_prep/vl_data.py",
                 "rebuild with build_vl_data(..., force=True), data_prep/vl_data.py")


# ---------------------------------------------------------------- validation

def _check_conversation(turns, where: str) -> int:
    """→ the number of `<image>` placeholders (all in user turns). Turns: an optional system
    turn, then user/assistant alternating, from a user turn to an assistant turn (the SFT
    loss is on assistant turns: a conversation that ends with the user trains nothing)."""
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: conversation record without turns")
    n = 0
    body = turns[1:] if isinstance(turns[0], dict) and turns[0].get("role") == "system" else turns
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            raise UserError(f"{where}: turn {j} is not {{'role': {'|'.join(ROLES)}, 'content': str}}")
        content = t["content"]
        if not content.strip():
            raise UserError(f"{where}: turn {j} ({t['role']}) is empty")
        if t["role"] == "user":
            n += content.count(IMAGE_PLACEHOLDER)
        elif IMAGE_PLACEHOLDER in content:
            raise UserError(f"{where}: turn {j} ({t['role']}) has an {IMAGE_PLACEHOLDER} placeholder "
                            f"(only user turns may)")
    roles = [t["role"] for t in body]
    want = ["user", "assistant"] * ((len(roles) + 1) // 2)
    if not roles or roles != want[:len(roles)] or roles[-1] != "assistant":
        raise UserError(f"{where}: turns {'/'.join(t['role'] for t in turns)} do not alternate "
                        f"user/assistant after an optional system turn, ending with the assistant")
    return n


def validate(rec: VLRecord, where: str) -> VLRecord:
    """Raises UserError(f"{where}: …") when `rec` cannot be trained on; → rec.

    Checks: known kind; images are PNG bytes; caption / mcq: at least one image and no
    placeholder in the text; conversation: placeholders (user turns only) == len(images),
    turn structure (`_check_conversation`); caption non-empty; mcq: non-empty question,
    2..26 distinct non-empty options, answer a letter within them; label ≥ −1."""
    if not isinstance(rec, VLRecord):
        raise UserError(f"{where}: a {type(rec).__name__}, not a VLRecord")
    if rec.kind not in KINDS:
        raise UserError(f"{where}: unknown record kind {rec.kind!r} (one of {', '.join(KINDS)})")
    for j, img in enumerate(rec.images):
        if not isinstance(img, (bytes, bytearray)) or bytes(img[:8]) != _PNG_SIGNATURE:
            raise UserError(f"{where}: image {j} is not PNG bytes")
    if not isinstance(rec.label, int) or rec.label < -1:
        raise UserError(f"{where}: label {rec.label!r} is not a class index (−1: none)")
    if rec.kind == "conversation":
        n = _check_conversation(rec.conversation, where)
        if n != len(rec.images):
            raise UserError(f"{where}: {n} {IMAGE_PLACEHOLDER} placeholder(s) for {len(rec.images)} image(s)")
        return rec
    if not rec.images:
        raise UserError(f"{where}: {rec.kind} record without an image")
    text = rec.caption if rec.kind == "caption" else " ".join([rec.question, *map(str, rec.options)])
    if IMAGE_PLACEHOLDER in text:
        raise UserError(f"{where}: {IMAGE_PLACEHOLDER} in a {rec.kind} record's text (its images go before the text)")
    if rec.kind == "caption":
        if not rec.caption.strip():
            raise UserError(f"{where}: empty caption")
        return rec
    if not rec.question.strip():
        raise UserError(f"{where}: empty question")
    opts = rec.options
    if not 2 <= len(opts) <= len(LETTERS) or not all(isinstance(o, str) and o.strip() for o in opts):
        raise UserError(f"{where}: {len(opts)} options; an MCQ needs 2..{len(LETTERS)} non-empty ones")
    if len({" ".join(o.lower().split()) for o in opts}) != len(opts):
        raise UserError(f"{where}: repeated option among {opts}")
    if not isinstance(rec.answer, str) or len(rec.answer) != 1 or rec.answer not in LETTERS[:len(opts)]:
        raise UserError(f"{where}: answer {rec.answer!r} is not a letter A..{LETTERS[len(opts) - 1]} "
                        f"({len(opts)} options)")
    return rec


# ---------------------------------------------------------------- store

def write_vl_store(out_dir: str, splits: dict[str, Iterable[VLRecord]], meta: dict | None = None,
                   records_per_shard: int = RECORDS_PER_SHARD) -> dict:
    """Validates and writes the splits, then manifest.json → the manifest: the store fields
    (clip/records.write_record_store) plus "kinds": {split: {kind: n}} and "meta"."""
    kinds: dict[str, dict[str, int]] = {}

    def checked(name, items):
        counts = kinds.setdefault(name, {})
        for i, rec in enumerate(items):
            validate(rec, f"{out_dir}: split {name!r} record {i} ({getattr(rec, 'source', '') or 'no source'})")
            counts[rec.kind] = counts.get(rec.kind, 0) + 1
            yield rec

    return write_record_store(out_dir, {k: checked(k, v) for k, v in splits.items()}, VL,
                              lambda: {"kinds": kinds, "meta": dict(meta or {})}, records_per_shard)


class VLStore(RecordStore):
    """The VL store in `data_dir`: `.manifest`, `.counts`, `.kinds` ({split: {kind: n}}),
    `.meta`, `.splits()`, `.split(name)` → random-access source (len, [i] → VLRecord)."""

    def __init__(self, data_dir: str):
        super().__init__(data_dir, VL)
        self.kinds: dict[str, dict[str, int]] = {k: dict(v) for k, v in self.manifest.get("kinds", {}).items()}
