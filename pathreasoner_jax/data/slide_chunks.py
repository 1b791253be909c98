"""Large slides stored as strided feature chunks, so a loader reads ~`sample_num` rows.

A slide with N > `data.slide_chunk_rows` patches is written with its patches in (y, x)
order and its (N, D) features split into K = ⌈N / chunk_rows⌉ chunk records that follow
the slide's header record in the same shard: chunk c holds rows c, c+K, c+2K, … — every
K-th patch, so each chunk covers the whole slide. The header keeps coords, cluster ids
and metadata of all N patches (≈12 B/patch) and K.

Why strided and not contiguous: the training subsample is spread evenly over the slide,
and an evenly spread subsample touches every contiguous chunk. `select_patches` takes
whole chunks instead — m of them, evenly interleaved (c = ⌊jK/m⌋) — and then spaces the
kept rows evenly down to the cap. `sample_num` 4096 of a 45k-patch slide in 2048-row chunks
reads 2 of 22 chunks: 4 MB of its 46 MB in bf16. With K = 1 (every slide ≤ chunk_rows, the
demo) the selection is `evenly_spaced_patches` and the record is the single-record format.
Reading is `records.decode_slide` + `records.ChunkedFeatures` (the schema's side).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pathreasoner_jax.records import FEATURE_DTYPES, SCHEMA_VERSION, SlideRecord, encode_slide, pack


def evenly_spaced_patches(coords_n2: np.ndarray, keep: np.ndarray, cap: int) -> np.ndarray:
    """Indices of at most `cap` patches among `keep`, evenly spaced in (y, x) coordinate order."""
    idx = keep[np.lexsort((coords_n2[keep, 0], coords_n2[keep, 1]))]
    if len(idx) > cap:
        idx = idx[np.linspace(0, len(idx) - 1, cap).round().astype(np.int64)]
    return idx


def select_patches(coords_n2: np.ndarray, keep: np.ndarray, cap: int, chunks: int = 1) -> np.ndarray:
    """At most `cap` of the rows `keep`, spread over the slide, drawn from as few of the K
    strided chunks as hold `cap` kept rows (rows of a chunked slide are in (y, x) order).

    keep: (n,) int row indices; → (≤ cap,) int64, ascending = (y, x) order.
    """
    if chunks <= 1:
        return evenly_spaced_patches(coords_n2, keep, cap)
    keep = np.sort(np.asarray(keep, np.int64))
    if len(keep) <= cap:
        return keep
    chunk_of = keep % chunks
    m = max(1, -(-cap * chunks // len(keep)))
    while True:
        picked = np.unique(np.arange(m) * chunks // m)
        sel = keep[np.isin(chunk_of, picked)]
        if len(sel) >= cap or m >= chunks:  # a dropped pseudo-bag cluster can thin some chunks
            break
        m += 1
    if len(sel) > cap:
        sel = sel[np.linspace(0, len(sel) - 1, cap).round().astype(np.int64)]
    return sel


def slide_patches(slide: SlideRecord, keep: np.ndarray, cap: int) -> np.ndarray:
    return select_patches(slide.coords, keep, cap, slide.chunks)


def encode_slide_records(rec: SlideRecord, feature_dtype: str = "", chunk_rows: int = 0) -> list[bytes]:
    """The shard records of one slide: [`records.encode_slide`] when N ≤ chunk_rows (or
    chunk_rows 0), else [header, chunk 0, …, chunk K−1] with the patches put in (y, x)
    order first."""
    n = rec.num_patches
    if chunk_rows <= 0 or n <= chunk_rows:
        return [encode_slide(rec, feature_dtype)]
    feats = np.asarray(rec.features)
    if feature_dtype:
        feats = feats.astype(FEATURE_DTYPES[feature_dtype])
    order = np.lexsort((rec.coords[:, 0], rec.coords[:, 1]))
    k = -(-n // chunk_rows)
    feats = feats[order]
    header = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    header.update(coords=rec.coords[order], cluster_ids=rec.cluster_ids[order], features=None, chunks=k,
                  feature_shape=list(feats.shape),
                  feature_dtype=next(name for name, dt in FEATURE_DTYPES.items() if dt == feats.dtype))
    return [pack({"v": SCHEMA_VERSION, "kind": "slide", **header})] + [
        pack({"kind": "slide_chunk", "chunk": c, "features": np.ascontiguousarray(feats[c::k])}) for c in range(k)]
