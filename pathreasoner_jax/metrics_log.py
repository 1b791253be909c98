"""Metrics to JSONL and TensorBoard (paths from `RunLayout.metrics` / `.tensorboard`), from host 0."""
from __future__ import annotations

import json
import math
import os
import time

import jax

from pathreasoner_jax.core.io import atomic_path


def print0(msg: str) -> None:
    """Prints on host 0 only (one line per event, not one per host)."""
    if jax.process_index() == 0:
        print(msg, flush=True)


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
        """On resume, drop lines logged after the checkpoint so the log matches the run."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            f.writelines(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
