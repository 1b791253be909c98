"""The record schema shared by data preparation and training (SPEC §1, §2).

Records are serialised with msgpack, never pickle: a numpy array becomes a map
`{"__nd__": True, "dtype": str, "shape": [...], "data": bytes}` (C order, little
endian; bfloat16, which numpy has no code for, as dtype "bfloat16" over its 16-bit
words), so a shard can be read by any msgpack implementation.

A *slide record* holds one slide's patch features; a *sample record* holds one
question/trajectory pair about a slide. The trajectory text the model is trained to
produce is built by `format_trajectory`: one finding or reasoning step per line, so
that SFT trajectory masking can find (and mask or drop) individual steps again with
`trajectory_spans`.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import ml_dtypes
import msgpack
import numpy as np

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
IMAGE_TOKEN = "<image>"
# how slide features may be stored (`data.feature_dtype`); 16-bit halves a 45k-patch slide
FEATURE_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                  "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _pack_default(obj):
    if isinstance(obj, np.ndarray) and obj.dtype == FEATURE_DTYPES["bfloat16"]:
        return {"__nd__": True, "dtype": "bfloat16", "shape": list(obj.shape),
                "data": np.ascontiguousarray(obj).view(np.uint16).astype("<u2").tobytes()}
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {"__nd__": True, "dtype": arr.dtype.newbyteorder("<").str,
                "shape": list(arr.shape), "data": arr.astype(arr.dtype.newbyteorder("<")).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _unpack_hook(d):
    if d.get("__nd__") is True:
        if d["dtype"] == "bfloat16":
            words = np.frombuffer(d["data"], dtype="<u2").astype(np.uint16)
            return words.view(FEATURE_DTYPES["bfloat16"]).reshape(d["shape"])
        return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
    return d


def pack(obj: dict) -> bytes:
    """dict (may hold numpy arrays) → msgpack bytes."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, object_hook=_unpack_hook, raw=False)


def raw(a: np.ndarray) -> np.ndarray:
    """`a` viewed as unsigned ints of its item size: numpy copies ml_dtypes' bfloat16 through
    a casting loop ~8× slower than the same bytes as uint16."""
    return a.view(f"u{a.dtype.itemsize}")


class ChunkedFeatures:
    """The (N, D) features of a chunked slide; indexing with row indices reads only the
    chunks those rows live in (`chunks_read` counts them, for the benchmark and tests).

    read_records(rows) → the records at those shard rows; chunk c is at `first_row + c`.
    """
    lazy = True
    ndim = 2

    def __init__(self, read_records: Callable[[Sequence[int]], list[bytes]], first_row: int, chunks: int,
                 num_patches: int, dim: int, dtype: str, where: str = ""):
        self._read, self.first_row, self.chunks = read_records, int(first_row), int(chunks)
        self.shape = (int(num_patches), int(dim))
        self.dtype = FEATURE_DTYPES[dtype]
        self.where = where
        self.chunks_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def _load(self, cs: np.ndarray) -> dict[int, np.ndarray]:
        out = {}
        for c, data in zip(cs, self._read([self.first_row + int(c) for c in cs])):
            d = unpack(data)
            if d.get("kind") != "slide_chunk" or d.get("chunk") != int(c):
                raise ValueError(f"{self.where}: record {self.first_row + int(c)} is not chunk {int(c)} of its slide")
            out[int(c)] = d["features"]
        self.chunks_read += len(cs)
        return out

    def __getitem__(self, idx):
        rows = np.asarray(idx)
        if rows.dtype.kind not in "iu":
            return np.asarray(self)[idx]
        rows = rows.astype(np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"{self.where}: row index out of range for {self.shape[0]} patches")
        chunk_of = rows % self.chunks
        data = self._load(np.unique(chunk_of))
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        for c, feats in data.items():
            m = chunk_of == c
            raw(out)[m] = raw(feats)[rows[m] // self.chunks]
        return out.reshape(np.shape(idx) + (self.shape[1],))

    def __array__(self, dtype=None, copy=None):
        full = np.empty(self.shape, self.dtype)
        for c, feats in self._load(np.arange(self.chunks)).items():
            raw(full)[c::self.chunks] = raw(feats)
        return full if dtype is None else full.astype(dtype)


@dataclass
class SlideRecord:
    """One slide's patch features.

    features_nd: (N, D) float32, or float16 / bfloat16 as stored (`data.feature_dtype`:
    readers copy the rows they keep into float32 batches, so a 45k-patch slide is never
    widened whole); coords_n2: (N, 2) int64 level-0 (x, y) of each patch's top-left
    corner; cluster_ids_n: (N,) int32 pseudo-bag (k-means) cluster of each patch.
    """
    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    cluster_ids: np.ndarray
    magnification: float = 20.0  # magnification the patches were taken at
    source: str = ""  # slide or feature file it came from
    label: str = ""  # tissue class / diagnosis where known
    patch_size: int = 256
    patch_size_level0: int = 256
    chunks: int = 1  # K strided feature chunks in the store (data/slide_chunks.py); 1 = one record

    def __post_init__(self):
        if not getattr(self.features, "lazy", False):  # ChunkedFeatures: read on indexing
            f = np.asarray(self.features)
            self.features = f if f.dtype in FEATURE_DTYPES.values() else f.astype(np.float32)
        self.coords = np.asarray(self.coords, np.int64).reshape(-1, 2)
        self.cluster_ids = np.asarray(self.cluster_ids, np.int32).reshape(-1)
        n = self.features.shape[0]
        if len(self.features.shape) != 2 or self.coords.shape[0] != n or self.cluster_ids.shape[0] != n:
            raise ValueError(f"slide {self.slide_id}: features {self.features.shape}, coords "
                             f"{self.coords.shape} and cluster_ids {self.cluster_ids.shape} disagree")

    @property
    def num_patches(self) -> int:
        return int(self.features.shape[0])


@dataclass
class SampleRecord:
    """One question about a slide with its target trajectory.

    `question` holds exactly one `<image>`; `findings` are the `<observe>` items,
    `reasoning` the `<think>` steps, `answer` the `<answer>` text; `entities` the
    canonical KG names that are the sample's ground truth for the entity reward.
    """
    sample_id: str
    slide_id: str
    split: str
    question: str
    findings: list[str]
    reasoning: list[str]
    answer: str
    diagnosis: str = ""
    entities: list[str] = field(default_factory=list)
    category: str = "diagnosis"

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"sample {self.sample_id}: split {self.split!r} not in {SPLITS}")
        if self.question.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"sample {self.sample_id}: question must hold exactly one {IMAGE_TOKEN}")

    @property
    def trajectory(self) -> str:
        return format_trajectory(self.findings, self.reasoning, self.answer)


def encode_slide(rec: SlideRecord, feature_dtype: str = "") -> bytes:
    """`feature_dtype` (a FEATURE_DTYPES name): store the features in it; "": as they are.
    One record with the features inline (`data/slide_chunks.py` splits large slides)."""
    d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}  # asdict would deep-copy the features
    if feature_dtype:
        d["features"] = np.asarray(rec.features).astype(FEATURE_DTYPES[feature_dtype])
    return pack({"v": SCHEMA_VERSION, "kind": "slide", **d})


def decode_slide(data: bytes, read_records=None, row: int = 0, where: str = "") -> SlideRecord:
    """A slide record; the header of a chunked slide (`chunks` > 1) gets lazy
    `ChunkedFeatures` reading its chunks through `read_records(rows) → [bytes]`, the
    chunks being at shard rows row+1 … row+K."""
    d = unpack(data)
    _check(d, "slide")
    if int(d.get("chunks", 1)) > 1:
        if read_records is None:
            raise ValueError(f"{where or 'record'}: slide {d.get('slide_id')!r} is stored in {d['chunks']} chunks; "
                             f"read it through SlideStore")
        n, dim = d["feature_shape"]
        d["features"] = ChunkedFeatures(read_records, row + 1, d["chunks"], n, dim, d["feature_dtype"],
                                        where=f"{where} slide {d['slide_id']}".strip())
    return SlideRecord(**{f.name: d[f.name] for f in dataclasses.fields(SlideRecord) if f.name in d})


def encode_sample(rec: SampleRecord) -> bytes:
    return pack({"v": SCHEMA_VERSION, "kind": "sample", **dataclasses.asdict(rec)})


def decode_sample(data: bytes) -> SampleRecord:
    d = unpack(data)
    _check(d, "sample")
    return SampleRecord(**{f.name: d[f.name] for f in dataclasses.fields(SampleRecord) if f.name in d})


def _check(d: dict, kind: str) -> None:
    if d.get("kind") != kind:
        raise ValueError(f"record is a {d.get('kind')!r}, expected {kind!r}")
    if d.get("v", 0) > SCHEMA_VERSION:
        raise ValueError(f"record schema v{d.get('v')} is newer than this code (v{SCHEMA_VERSION})")


# ---------------------------------------------------------------- trajectories

def clean_step(text: str) -> str:
    """One line per step: collapse whitespace (a newline inside a step would split it)."""
    return re.sub(r"\s+", " ", text).strip()


def trajectory_spans(findings: list[str], reasoning: list[str], answer: str
                     ) -> tuple[str, list[tuple[str, int, int, int]]]:
    """Builds the trajectory text and the character span of every step.

    Returns (text, spans) with spans [(kind, index, start, end)], kind in
    {"finding", "reasoning", "answer"}; text[start:end] is the step's text.
    """
    parts: list[str] = []
    spans: list[tuple[str, int, int, int]] = []
    pos = 0

    def add(s: str, kind: str | None = None, idx: int = 0):
        nonlocal pos
        if kind is not None:
            spans.append((kind, idx, pos, pos + len(s)))
        parts.append(s)
        pos += len(s)

    add("<observe>")
    for i, f in enumerate(findings):
        add("\n")
        add(clean_step(f), "finding", i)
    add("\n</observe>\n<think>")
    for i, r in enumerate(reasoning):
        add("\n")
        add(clean_step(r), "reasoning", i)
    add("\n</think>\n<answer>")
    add(clean_step(answer), "answer", 0)
    add("</answer>")
    return "".join(parts), spans


def format_trajectory(findings: list[str], reasoning: list[str], answer: str) -> str:
    """`<observe>` one finding per line `</observe>`, `<think>` one step per line
    `</think>`, `<answer>answer</answer>`, tags separated by newlines (SPEC §2)."""
    return trajectory_spans(findings, reasoning, answer)[0]


_SPAN_RE = {t: re.compile(rf"<{t}>(.*?)</{t}>", re.S) for t in ("observe", "info", "think", "answer")}


def parse_trajectory(text: str) -> tuple[list[str], list[str], str]:
    """Inverse of `format_trajectory` (also accepts the reference's `<info>` tag).

    Steps are the non-empty lines of each span; raises ValueError when a span is missing.
    """
    obs = _SPAN_RE["observe"].search(text) or _SPAN_RE["info"].search(text)
    think = _SPAN_RE["think"].search(text)
    ans = _SPAN_RE["answer"].search(text)
    if not (obs and think and ans):
        missing = [n for n, m in (("observe", obs), ("think", think), ("answer", ans)) if not m]
        raise ValueError(f"trajectory lacks the {', '.join(missing)} span(s)")
    lines = lambda s: [clean_step(x) for x in s.split("\n") if x.strip()]  # noqa: E731
    return lines(obs.group(1)), lines(think.group(1)), clean_step(ans.group(1))
