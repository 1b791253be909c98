"""`pathreasoner clip`: Patho-CLIP training around the pure step in step.py.

Data from the image–text store (`clip-data`), the model from build.py, batches a
function of (seed, step) so an interrupted run resumes from its last checkpoint with the
same batches; the next batch is decoded in a thread while the device runs the step.
Each host builds the global batch's rows it owns (rows split evenly over processes).
Metrics (JSONL + TensorBoard): loss, grad_norm, learning_rate, logit_scale,
images_per_s, step_time_s, epoch, skipped. A step with a non-finite loss or gradients is
skipped inside the jit; more than clip.max_nonfinite_steps in a row stop the run.
"""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.checkpoint import Checkpointer
from pathreasoner_jax.clip.build import build_model, compute_dtype
from pathreasoner_jax.clip.loader import ClipBatches
from pathreasoner_jax.clip.preprocess import load_clip_tokenizer
from pathreasoner_jax.clip.records import ImageTextStore, clip_tokenizer_path
from pathreasoner_jax.clip.step import make_clip_step
from pathreasoner_jax.core.progress import Progress
from pathreasoner_jax.metrics_log import MetricsLogger, print0
from pathreasoner_jax.run_layout import CLIP, RunLayout
from pathreasoner_jax.sharding import mesh_from_config
from pathreasoner_jax.train.stage import NonFiniteGuard, shard_rows
from pathreasoner_jax.train.stage import host_rows as _host_rows


def host_rows(batch: dict) -> dict:
    """This process's share of the global batch's rows (the labels stay on the host)."""
    return _host_rows({k: v for k, v in batch.items() if k != "labels"})


def train_clip(cfg, force: bool = False, stop_after: int | None = None) -> str:
    """Runs (or resumes) Patho-CLIP training; returns the checkpoint directory."""
    layout = RunLayout(cfg)
    ckpt_dir = layout.checkpoint(CLIP)
    if layout.stage_done(CLIP) and not force:
        print0(f"clip already finished ({ckpt_dir}); use --force to redo")
        return ckpt_dir
    if force and os.path.isdir(ckpt_dir) and jax.process_index() == 0:
        shutil.rmtree(ckpt_dir)
    c = cfg.clip
    store = ImageTextStore(layout.clip_data_dir)
    tokenizer = load_clip_tokenizer(clip_tokenizer_path(cfg))
    mesh = mesh_from_config(cfg.mesh)
    model, mc = build_model(cfg, tokenizer, mesh)
    train = store.split("train")
    loader = ClipBatches(train, tokenizer, mc.image_size, mc.context_length, c.batch_size, cfg.run.seed,
                         None if c.max_steps else c.epochs)
    total = c.max_steps or len(loader)
    step_fn, params, opt_state = make_clip_step(model, c, mesh, total, compute_dtype(c))
    ck = Checkpointer(ckpt_dir, c.keep_last)
    meta = {"step": 0}
    if ck.latest_step() is not None:
        params, _, opt_state, meta = ck.resume(step_fn.graphdef, params, nnx.State({}), opt_state, nnx.Param)
        print0(f"clip: resuming at step {meta['step']} from {ckpt_dir}")
    start = int(meta["step"])
    guard = NonFiniteGuard("clip", "clip.max_nonfinite_steps", c.max_nonfinite_steps, ck, meta)
    logger = MetricsLogger(layout.metrics(CLIP), layout.tensorboard(CLIP))
    logger.truncate_after(start)
    print0(f"clip: {len(train)} training pairs, {total} steps of {c.batch_size} ({c.grad_accum} micro-batches), "
           f"{c.loss} loss, model {mc.vision.width}/{mc.vision.layers} vision, {mc.text.width}/{mc.text.layers} text, "
           f"{mc.image_size} px, mesh {dict(mesh.shape)}")
    bar = Progress("clip", total, start, enabled=cfg.run.progress, unit="step")
    jitted = None
    pool = ThreadPoolExecutor(1)
    try:
        upcoming = pool.submit(loader.batch, start) if start < total else None
        t0 = time.perf_counter()
        for k in range(start, total):
            host = upcoming.result()
            upcoming = pool.submit(loader.batch, k + 1) if k + 1 < total else None
            batch = shard_rows(host_rows(host), mesh)
            first = jitted is None
            if first:
                bar.compiling("the train step")
                jitted = step_fn.jitted(params, opt_state, batch)
            params, opt_state, m = jitted(params, opt_state, batch, jnp.int32(k))
            loss, skipped = float(m["loss"]), bool(float(m["skipped"]))
            if first:
                bar.compiled()
            guard.update(skipped)
            dt = time.perf_counter() - t0
            done = k + 1 == total or (stop_after is not None and k + 1 >= stop_after)
            logger.log(k + 1, {"loss": loss, "grad_norm": float(m["grad_norm"]), "learning_rate": float(m["lr"]),
                               "logit_scale": float(m["logit_scale"]), "images_per_s": c.batch_size / dt,
                               "step_time_s": dt, "epoch": (k + 1) / loader.steps_per_epoch,
                               "skipped": float(skipped), "skipped_steps": guard.total})
            bar.update(1, restart_rate=first, loss=f"{loss:.4f}", img_s=f"{c.batch_size / dt:.0f}")
            guard.check(k + 1, last=done)
            if (k + 1) % c.checkpoint_every == 0 or done:
                ck.save(k + 1, nnx.merge(step_fn.graphdef, params), opt_state,
                        {"step": k + 1, "stage": CLIP, "config": cfg.fingerprint("clip"), **guard.meta()})
            if done:
                break
            t0 = time.perf_counter()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        ck.close()
        logger.close()
    finished = stop_after is None or start >= total or stop_after >= total
    if finished and jax.process_index() == 0:
        layout.mark_done(CLIP, {"steps": total, "pairs": len(train), "loss": c.loss})
    return ck.directory
