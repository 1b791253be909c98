"""PrimeKG `kg.csv` (SPEC §4 columns) streamed into a `CompactKG`, with an .npz cache.

The file (~940 MB, 8.1M rows) is read in blocks by pyarrow's CSV reader, only the eight
columns the graph needs, single-threaded so that a malformed row is reported with its
line number; each block becomes int64 index arrays (no per-row Python), names and types
are kept once per node. Nodes are PrimeKG's `x_index`/`y_index` values mapped to
0..N−1 in index order; `CompactKG.keys` keeps "primekg:<index>" for each. The loaded
graph is cached next to the file (`<kg.csv>.pathreasoner.npz`, or under `cache_dir`),
keyed by the file's size and modification time, so a second `prepare` loads in seconds.
"""
from __future__ import annotations

import csv
import os
import sys

import numpy as np

from data_prep.kg_compact import CompactKG, file_fingerprint
from pathreasoner_jax.core.errors import UserError

PRIMEKG_COLUMNS = ("relation", "display_relation", "x_index", "x_id", "x_type", "x_name", "x_source",
                   "y_index", "y_id", "y_type", "y_name", "y_source")
PRIMEKG_TYPES = {"disease": "diagnosis", "effect/phenotype": "finding", "anatomy": "anatomy"}
_NEEDED = ("relation", "display_relation", "x_index", "x_type", "x_name", "y_index", "y_type", "y_name")
BLOCK_BYTES = 16 << 20


def _header(path: str) -> list[str]:
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    except FileNotFoundError:
        raise UserError(f"{path}: knowledge graph file not found") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None


def read_primekg(path: str, max_rows: int = 0) -> CompactKG:
    """kg.csv → CompactKG (edge label = display_relation, else relation)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    header = _header(path)
    missing = [c for c in PRIMEKG_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}: PrimeKG file lacks column(s) {', '.join(missing)}")
    bad: list = []

    def on_bad_row(row):
        bad.append(row)
        return "skip"
    reader = pcsv.open_csv(
        path, read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_bad_row, newlines_in_values=False),
        convert_options=pcsv.ConvertOptions(include_columns=list(_NEEDED),
                                            column_types={c: pa.string() for c in _NEEDED}))
    heads, tails, rels = [], [], []
    labels: dict[str, int] = {}
    node_name: dict[int, str] = {}
    node_type: dict[int, str] = {}
    rows = 0
    try:
        for batch in reader:
            if bad:
                break
            if max_rows and rows >= max_rows:
                break
            if max_rows:
                batch = batch.slice(0, max_rows - rows)
            rows += batch.num_rows
            col = {c: batch.column(c) for c in _NEEDED}
            ends = []
            for s in ("x", "y"):
                try:
                    idx = np.asarray(col[s + "_index"].cast(pa.int64()))
                except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                    raise UserError(f"{path}: column {s}_index is not an integer index ({e})") from None
                _new_names(idx, col[s + "_name"], col[s + "_type"], node_name, node_type)
                ends.append(idx)
            disp = col["display_relation"].to_pylist()
            rel = col["relation"].to_pylist()
            codes = np.fromiter((labels.setdefault(d or r, len(labels)) for d, r in zip(disp, rel)), np.int32,
                                count=len(disp))
            heads.append(ends[0])
            tails.append(ends[1])
            rels.append(codes)
    except pa.ArrowInvalid as e:
        raise UserError(f"{path}: not a readable CSV ({' '.join(str(e).split())[:200]})") from None
    if bad:
        r = bad[0]
        where = f"line {r.number}" if r.number is not None else f"the row {r.text[:60]!r}"
        raise UserError(f"{path}: {where} has {r.actual_columns} fields where the header has {r.expected_columns}")
    keys = np.asarray(sorted(node_name), np.int64)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))  # noqa: E731
    head, tail = np.searchsorted(keys, cat(heads)), np.searchsorted(keys, cat(tails))
    return CompactKG([node_name[k] for k in keys.tolist()],
                     [PRIMEKG_TYPES.get(node_type[k], node_type[k]) for k in keys.tolist()], {}, head, tail,
                     cat(rels), list(labels), source=path, keys=[f"primekg:{k}" for k in keys.tolist()])


def _new_names(idx: np.ndarray, names, types, node_name: dict, node_type: dict) -> None:
    """Records name and type of each index seen for the first time (its first row)."""
    uniq, first = np.unique(idx, return_index=True)
    fresh = [i for i, k in enumerate(uniq.tolist()) if k not in node_name]
    if not fresh:
        return
    at = first[fresh]
    for k, n, t in zip(uniq[fresh].tolist(), names.take(at).to_pylist(), types.take(at).to_pylist()):
        node_name[k], node_type[k] = n or "", t or ""


def cache_path(path: str, cache_dir: str = "") -> str:
    name = os.path.basename(path) + ".pathreasoner.npz"
    return os.path.join(cache_dir, name) if cache_dir else path + ".pathreasoner.npz"


def load_primekg(path: str, cache_dir: str = "", max_rows: int = 0) -> CompactKG:
    """The graph of `path`, from its cache when the cache matches the file."""
    fp = dict(file_fingerprint(path), max_rows=max_rows) if os.path.isfile(path) else None
    cached = cache_path(path, cache_dir)
    if fp and os.path.isfile(cached):
        try:
            kg, stored = CompactKG.load(cached)
            if stored.get("fingerprint") == fp:
                kg.source = path
                return kg
        except UserError as e:
            print(f"pathreasoner: {e}; reading {path} again", file=sys.stderr)
    kg = read_primekg(path, max_rows)
    try:
        kg.save(cached, {"fingerprint": fp})
    except OSError as e:  # a read-only data folder: carry on without a cache
        print(f"pathreasoner: cannot cache the KG at {cached} ({e}); set a writable cache folder", file=sys.stderr)
    return kg
