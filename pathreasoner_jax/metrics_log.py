"""Metrics to JSONL (metrics/<stage>.jsonl) and TensorBoard (tb/<stage>), from host 0."""
from __future__ import annotations

import json
import math
import os
import time

import jax

from pathreasoner_jax.slides.fileio import atomic_path


def print0(msg: str) -> None:
    """Prints on host 0 only (one line per event, not one per host)."""
    if jax.process_index() == 0:
        print(msg, flush=True)


class MetricsLogger:
    def __init__(self, run_dir: str, stage: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(run_dir, "metrics", f"{stage}.jsonl")
        self.tb = None
        if self.enabled:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(run_dir, "tb", stage))

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
