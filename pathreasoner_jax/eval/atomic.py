"""Atomic file writes: write a temporary sibling, then `os.replace` it over the target, so a
reader (or a crash) never sees a half-written metrics file, plot or report."""
from __future__ import annotations

import json
import math
from typing import Any

from pathreasoner_jax.slides.fileio import atomic_path


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically (the folder is created if needed); returns `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays → Python; NaN/inf → None (strict JSON has no NaN); tuples/sets → lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=str)]  # sorted: stable files
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalar or array
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def atomic_write_json(path: str, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")
