"""A training stage's life in the run directory, the same for SFT and GRPO.

`open_stage` is the common opening (finished → say so and skip; --force → clear;
the memory estimate, which stops with a clear error when the config cannot fit);
`resume` restores the newest intact checkpoint into the split training state;
`open_logger` truncates the metrics log to the resumed step; `NonFiniteGuard` counts the
steps the jitted update skipped (non-finite loss or gradients: params and optimizer state
left unchanged) and stops the stage with a one-line `UserError` past the configured
limit, or when its last step was skipped, so a non-finite run is never marked done;
`finish` writes DONE on host 0.
"""
from __future__ import annotations

import os
import shutil

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from pathreasoner_jax.checkpoint import Checkpointer
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.metrics_log import MetricsLogger, print0


def open_stage(rt, stage: str, force: bool) -> bool:
    """False (after saying so) when `stage` already finished and `force` is off."""
    layout, ckpt_dir = rt.layout, rt.layout.checkpoint(stage)
    if layout.stage_done(stage) and not force:
        print0(f"{stage} already finished ({ckpt_dir}); use --force to redo")
        return False
    if force and os.path.isdir(ckpt_dir) and jax.process_index() == 0:
        shutil.rmtree(ckpt_dir)
    from pathreasoner_jax.memory import report
    report(rt.cfg, rt.mesh, rt.model_cfg, log=print0)
    return True


def resume(ck: Checkpointer, stage: str, graphdef, trainable, frozen, opt_state, is_trainable):
    """→ (trainable, frozen, opt_state, meta): the newest intact checkpoint's, or the inputs
    and {"step": 0}."""
    if ck.latest_step() is None:
        return trainable, frozen, opt_state, {"step": 0}
    trainable, frozen, opt_state, meta = ck.resume(graphdef, trainable, frozen, opt_state, is_trainable)
    print0(f"{stage}: resuming at step {meta['step']} from {ck.directory}")
    return trainable, frozen, opt_state, meta


class NonFiniteGuard:
    """Counts skipped (non-finite) steps: `total` over the stage, `streak` of consecutive
    ones. `limit` (`<section>.max_nonfinite_steps`) consecutive skips are tolerated; one
    more, or a skip at the stage's last step, stops the stage (`check` raises)."""

    def __init__(self, stage: str, key: str, limit: int, ck: Checkpointer, meta: dict):
        self.stage, self.key, self.limit, self.ck = stage, key, limit, ck
        self.total = int(meta.get("skipped_steps", 0))
        self.streak = int(meta.get("nonfinite_streak", 0))

    def update(self, skipped: bool) -> None:
        self.total += int(skipped)
        self.streak = self.streak + 1 if skipped else 0

    def meta(self) -> dict:
        return {"skipped_steps": self.total, "nonfinite_streak": self.streak}

    def check(self, step: int, last: bool, what: str = "loss or gradients") -> None:
        """Raises the stage's `UserError` when the streak passed the limit, or `last` and
        this step was skipped."""
        if not self.streak or (self.streak <= self.limit and not last):
            return
        self.ck.wait()  # a save still in flight is finished and recorded before we name it
        good = self.ck.latest_intact_step()
        where = (f"last verified checkpoint: step {good} in {self.ck.directory}" if good is not None
                 else f"no verified checkpoint in {self.ck.directory}")
        why = (f"{self.streak} consecutive step(s) skipped, more than {self.key}={self.limit}"
               if self.streak > self.limit else "the stage's last step was skipped")
        raise UserError(f"{self.stage}: non-finite {what} at step {step} ({why}); {where}; "
                        "not marked done (lower the learning rate or check the data, then rerun)")


def open_logger(rt, stage: str, start: int) -> MetricsLogger:
    logger = MetricsLogger(rt.layout.metrics(stage), rt.layout.tensorboard(stage))
    logger.truncate_after(start)
    return logger


def finish(rt, stage: str, finished: bool, info: dict) -> None:
    if finished and jax.process_index() == 0:
        rt.layout.mark_done(stage, info)


def host_rows(batch):
    """This process's share of a global batch's rows (a tree of arrays; rows split evenly
    over processes in order; all of them on one host)."""
    n, p = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    return jax.tree.map(lambda v: v[p * (len(v) // n):(p + 1) * (len(v) // n)], batch)


def shard_rows(batch: dict, mesh) -> dict:
    """Host-local rows (a tree of arrays) → global arrays split over (data, fsdp)."""
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)
