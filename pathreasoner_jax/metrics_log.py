"""Metrics to JSONL and TensorBoard (paths from `RunLayout.metrics` / `.tensorboard`), from host 0."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax

from pathreasoner_jax.core.io import atomic_path


def print0(msg: str) -> None:
    """Prints on host 0 only (one line per event, not one per host)."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def warn0(msg: str) -> None:
    """A one-line warning on stderr, from host 0 only."""
    if jax.process_index() == 0:
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def _parse(line: str):
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


class MetricsLogger:
    """`path`: the JSONL file; `tensorboard_dir`: the event folder ("" : no TensorBoard)."""

    def __init__(self, path: str, tensorboard_dir: str = ""):
        self.enabled = jax.process_index() == 0
        self.path = path
        self.tb = None
        if self.enabled:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            if tensorboard_dir:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(tensorboard_dir)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if v is not None else None) for k, v in metrics.items()}
        clean = {k: (None if v is not None and not math.isfinite(v) else v) for k, v in clean.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log matches the run, and
        lines that do not parse (a crash mid-write tears the last one), with a warning."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        keep, torn = [], []
        with open(self.path, errors="replace") as f:
            for i, ln in enumerate(f, 1):
                if not ln.strip():
                    continue
                rec = _parse(ln)
                if rec is None:
                    torn.append(i)
                elif rec.get("step", 0) <= step:
                    keep.append(ln if ln.endswith("\n") else ln + "\n")
        if torn:
            warn0(f"{self.path}: dropped {len(torn)} unreadable line(s) (line {', '.join(map(str, torn[:5]))}"
                  f"{' …' if len(torn) > 5 else ''}), e.g. torn by a crash mid-write")
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            f.writelines(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
