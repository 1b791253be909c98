"""Atomic file writes: write under a temporary name in the same folder, then `os.replace`.

A crash (even SIGKILL) leaves at most a `.tmp-<name>-<pid>` file, never a half-written
final file; `remove_stale_tmp` clears those on the next run. Every JSON file the project
writes goes through `write_json`: strict JSON (NaN/inf → null, numpy → Python), indent 1,
sorted keys, so files diff cleanly between runs.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
from typing import Any, Iterable


def tmp_name(path: str) -> str:
    d, n = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".tmp-{n}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path; on success it replaces `path`, on error it is removed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> str:
    """Writes `data` to `path` atomically (the folder is created if needed); returns `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays → Python; NaN/inf → None (strict JSON has no NaN); tuples/sets →
    lists (sets sorted, so files are stable); anything else → str."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=str)]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalar or array
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def write_json(path: str, obj: Any) -> str:
    return write_text(path, json.dumps(to_jsonable(obj), indent=1, sort_keys=True) + "\n")


def remove_stale_tmp(path: str) -> int:
    """Removes leftover temporaries of `path` (from killed runs); returns how many."""
    d, n = os.path.split(os.path.abspath(path))
    stale = glob.glob(os.path.join(glob.escape(d), f".tmp-{glob.escape(n)}-*"))
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
    return len(stale)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_array_record(path: str, records: Iterable[bytes], options: str = "group_size:1") -> dict:
    """Writes encoded records to one array_record file atomically → {"path": basename,
    "records": n, "sha256": hex} (the manifests' shard entry)."""
    from array_record.python.array_record_module import ArrayRecordWriter
    n = 0
    with atomic_path(path) as tmp:
        w = ArrayRecordWriter(tmp, options)
        try:
            for r in records:
                w.write(r)
                n += 1
        finally:
            w.close()
    return {"path": os.path.basename(path), "records": n, "sha256": sha256_file(path)}
