"""Collective traffic read off a compiled executable's HLO text (per device).

Every `all-gather`, `all-reduce`, `reduce-scatter`, `all-to-all` and
`collective-permute` (and their async `-start` forms) is counted once per appearance, by
the bytes of its result on one device — for an async start, the largest part of its
result tuple (the gathered or reduced buffer). An all-reduce moves about twice its size
over a ring (reduce-scatter + all-gather), so `ici_bytes` counts it twice. Collectives
inside a while loop's body are multiplied by the loop's known trip count when XLA
records one (`known_trip_count`), else `unknown_trip_count` times (the sampler's
decode loop: about max_new_tokens − 1).
"""
from __future__ import annotations

import re
from collections import defaultdict

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(" + "|".join(KINDS) + r")(-start)?\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_WHILE = re.compile(r"\bwhile\(.*?body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLS = re.compile(r"(?:to_apply|calls|body|condition|branch_computations)=\{?%?([\w.\-]+)")


def array_bytes(shape_text: str) -> list[int]:
    """Bytes of each array in an HLO shape, e.g. `(bf16[4,8]{1,0}, f32[2])` → [64, 8]."""
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n * _DTYPE_BYTES[dtype])
    return out


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, name = defaultdict(list), None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line) if line[:1] not in (" ", "\t") else None  # headers start at column 0
        if m:
            name = m.group(1)
            continue
        if name is not None:
            comps[name].append(line)
    return comps


def _multipliers(comps: dict[str, list[str]], unknown_trip_count: int = 1) -> dict[str, int]:
    """How many times each computation runs per call of the entry (while bodies × trip count)."""
    entry = next((n for n in comps if n.startswith("main")), None)
    mult: dict[str, int] = defaultdict(int)

    def visit(name: str, times: int, depth: int = 0):
        if depth > 50 or name not in comps:
            return
        mult[name] += times
        for line in comps[name]:
            w = _WHILE.search(line)
            trip = _TRIP.search(line)
            for callee in _CALLS.findall(line):
                body = w is not None and callee == w.group(1)
                k = times * ((int(trip.group(1)) if trip else unknown_trip_count) if body else 1)
                visit(callee, k, depth + 1)
    if entry is None:
        return {n: 1 for n in comps}
    visit(entry, 1)
    return mult


def collective_bytes(hlo: str, unknown_trip_count: int = 1) -> dict:
    """{"by_kind": {kind: {"count", "bytes"}}, "ici_bytes": per-device bytes over ICI}."""
    comps = _computations(hlo)
    mult = _multipliers(comps, unknown_trip_count)
    by_kind = {k: {"count": 0, "bytes": 0} for k in KINDS}
    for name, lines in comps.items():
        times = mult.get(name, 0)
        if not times:
            continue
        for line in lines:
            m = _OP.match(line)
            if not m:
                continue
            sizes = array_bytes(m.group(1))
            if not sizes:
                continue
            by_kind[m.group(2)]["count"] += times
            by_kind[m.group(2)]["bytes"] += times * max(sizes)
    ici = sum(v["bytes"] * (2 if k == "all-reduce" else 1) for k, v in by_kind.items())
    return {"by_kind": {k: v for k, v in by_kind.items() if v["count"]}, "ici_bytes": ici}
