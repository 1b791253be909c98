"""A training stage's life in the run directory, the same for SFT and GRPO.

`open_stage` is the common opening (finished → say so and skip; --force → clear;
the memory estimate, which stops with a clear error when the config cannot fit);
`resume` restores the latest checkpoint into the split training state; `open_logger`
truncates the metrics log to the resumed step; `finish` writes DONE on host 0.
"""
from __future__ import annotations

import os
import shutil

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from pathreasoner_jax.checkpoint import Checkpointer
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
    """→ (trainable, frozen, opt_state, start step): the latest checkpoint's, or the inputs and 0."""
    if ck.latest_step() is None:
        return trainable, frozen, opt_state, 0
    trainable, frozen, opt_state, meta = ck.resume(graphdef, trainable, frozen, opt_state, is_trainable)
    print0(f"{stage}: resuming at step {meta['step']} from {ck.directory}")
    return trainable, frozen, opt_state, meta["step"]


def open_logger(rt, stage: str, start: int) -> MetricsLogger:
    logger = MetricsLogger(rt.layout.metrics(stage), rt.layout.tensorboard(stage))
    logger.truncate_after(start)
    return logger


def finish(rt, stage: str, finished: bool, info: dict) -> None:
    if finished and jax.process_index() == 0:
        rt.layout.mark_done(stage, info)


def shard_rows(batch: dict, mesh) -> dict:
    """Host-local rows → global arrays split over (data, fsdp)."""
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
