"""Atomic file writes: write under a temporary name in the same folder, then os.replace.

A crash (even SIGKILL) leaves at most a `.tmp-<name>-<pid>` file, never a half-written
final file; `remove_stale_tmp` clears those on the next run.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os


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


def write_json(path: str, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")


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
