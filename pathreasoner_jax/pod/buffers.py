"""XLA's own account of where an executable's device memory goes, from the dump that
`compile --dump-dir` asks libtpu for (`xla_dump_to`): the `*memory-usage-report.txt`
of the compiled module lists every allocation of the temporary heap, largest first, with
the shapes of the values that share it. The largest few go into the report, so "does not
fit" comes with the buffers that make it so (e.g. fp32 logits `f32[1,2048,151936]`)."""
from __future__ import annotations

import glob
import os
import re

_ROW = re.compile(r"^\s*[\d.]+\w*\(\s*\d+%\);\s*([\d.]+)(B|KiB|MiB|GiB|TiB);\s*(\d+);\s*(\d+);\s*(.*)$")
_UNIT = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def largest_allocations(report: str, n: int = 8) -> list[dict]:
    """The first (default memory space) table of a memory-usage report → up to `n` rows
    {bytes, values, shapes}, largest first. Sizes are the report's rounded figures."""
    rows = []
    for line in report.split("\n\n", 2)[0].splitlines():
        m = _ROW.match(line)
        if m:
            size, unit, _offset, values, shapes = m.groups()
            rows.append({"bytes": int(float(size) * _UNIT[unit]), "values": int(values), "shapes": shapes.strip()})
    return sorted(rows, key=lambda r: -r["bytes"])[:n]


def report_path(dump_dir: str) -> str | None:
    """The memory-usage report of the largest module in a dump folder (the jitted step;
    small helper modules are dumped beside it)."""
    found = glob.glob(os.path.join(dump_dir, "*after_optimizations-memory-usage-report.txt"))
    return max(found, key=os.path.getsize) if found else None


def dump_options(dump_dir: str) -> dict:
    return {"xla_dump_to": dump_dir, "xla_dump_hlo_as_text": True}
