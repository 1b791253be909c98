"""SFT orchestration: data, model, checkpoints, logging around the pure step in step.py.

Stages: `sft` (plain masked SFT) and `sft_pseudobag` (sft.pseudo_bag=true, starting from
the `sft` stage's final checkpoint unless sft.init_from says otherwise). A rerun of a
finished stage is a no-op unless forced; an interrupted one resumes from its last
checkpoint with the same batches and RNG (both are functions of the step).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from pathreasoner_jax.checkpoint import Checkpointer, restore_params
from pathreasoner_jax.data.encode import ExampleEncoder
from pathreasoner_jax.data.loader import SFTLoader
from pathreasoner_jax.flops import device_peak_flops, train_flops_per_token
from pathreasoner_jax.metrics_log import MetricsLogger, print0
from pathreasoner_jax.runtime import Runtime
from pathreasoner_jax.sft.step import make_sft_step

log = logging.getLogger(__name__)


def stage_name(cfg) -> str:
    return "sft_pseudobag" if cfg.sft.pseudo_bag else "sft"


def stage_done(rt: Runtime, stage: str) -> bool:
    return os.path.exists(rt.path("checkpoints", stage, "DONE"))


def load_priors(path: str) -> dict:
    """The pseudo-bag prior cache (SPEC §5 npz: prior::<id>, cluster_ids::<id>, __meta__)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: pseudo-bag prior cache missing (run `pathreasoner prior` first)")
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            if k.startswith("prior::"):
                p = np.asarray(z[k], np.float64)
                if p.sum() > 0:  # renormalise: the cache is float32-rounded
                    out[k.split("::", 1)[1]] = p / p.sum()
    return out


def prior_path(rt: Runtime) -> str:
    return rt.cfg.sft.prior_path or rt.path("prior.npz")


def shard_batch(batch: dict, mesh) -> dict:
    """Host-local rows → global arrays split over (data, fsdp)."""
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def train_sft(rt: Runtime, force: bool = False, stop_after: int | None = None) -> str:
    """Runs (or resumes) the SFT stage; returns its checkpoint directory."""
    from pathreasoner_jax.data.store import SampleSource, SlideStore

    cfg, stage = rt.cfg, stage_name(rt.cfg)
    ckpt_dir = rt.path("checkpoints", stage)
    if stage_done(rt, stage) and not force:
        print0(f"{stage} already finished ({ckpt_dir}); use --force to redo")
        return ckpt_dir
    if force and os.path.isdir(ckpt_dir) and jax.process_index() == 0:
        shutil.rmtree(ckpt_dir)
    samples = SampleSource(rt.prep_dir, "train")
    slides = SlideStore(rt.prep_dir)
    priors = load_priors(prior_path(rt)) if cfg.sft.pseudo_bag else None
    encoder = ExampleEncoder(rt.tokenizer, rt.ids.image, cfg.data.sample_num, cfg.sft.trajectory_mask_mode,
                             cfg.sft.trajectory_mask_rate, cfg.sft.pseudo_bag_q if priors else 0.0, priors)
    loader = SFTLoader(samples, slides, encoder, cfg.sft.batch_size, cfg.sft.epochs, cfg.run.seed,
                       cfg.data.length_buckets, rt.ids.pad)
    total = cfg.sft.max_steps or len(loader)
    from pathreasoner_jax.memory import report
    report(cfg, rt.mesh, rt.model_cfg, log=print0)  # stops with a clear error when it cannot fit
    model = rt.build_model()
    init_from = cfg.sft.init_from or (rt.path("checkpoints", "sft") if cfg.sft.pseudo_bag else "")
    ck = Checkpointer(ckpt_dir, cfg.sft.keep_last)
    resuming = ck.latest_step() is not None
    if init_from and not resuming:
        restore_params(init_from, model)
        print0(f"{stage}: initialised from {init_from}")
    step_fn, trainable, frozen, opt_state = make_sft_step(model, cfg.sft, rt.model_cfg.lora.enabled, rt.mesh, total)
    start = 0
    if resuming:
        trainable, frozen, opt_state, meta = ck.resume(step_fn.graphdef, trainable, frozen, opt_state,
                                                       step_fn.filter)
        start = meta["step"]
        print0(f"{stage}: resuming at step {start} from {ckpt_dir}")
    logger = MetricsLogger(rt.run_dir, stage)
    logger.truncate_after(start)
    flops_tok = train_flops_per_token(rt.model_cfg, max(cfg.data.length_buckets))
    peak = device_peak_flops()
    base_key = jax.random.key(cfg.run.seed)
    jitted = None
    bar = tqdm(range(start, total), initial=start, total=total, desc=stage, disable=not cfg.run.progress)
    for k in bar:
        t0 = time.perf_counter()
        batch = shard_batch(loader.batch(k % len(loader)), rt.mesh)
        if jitted is None:
            jitted = step_fn.jitted(trainable, frozen, opt_state, batch)
        trainable, opt_state, m = jitted(trainable, frozen, opt_state, batch, jax.random.fold_in(base_key, k),
                                         jnp.int32(k))
        loss = float(m["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"{stage}: loss is {loss} at step {k}; last good checkpoint in {ckpt_dir}")
        dt = time.perf_counter() - t0
        tokens = float(np.sum(batch_valid_tokens(batch)))
        rec = {"loss": loss, "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
               "tokens_per_s": tokens / dt, "step_time_s": dt,
               "mfu": (flops_tok * tokens / dt / peak) if peak else None}
        logger.log(k + 1, rec)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / dt:.0f}")
        done = k + 1 == total or (stop_after is not None and k + 1 >= stop_after)
        if (k + 1) % cfg.sft.checkpoint_every == 0 or done:
            ck.save(k + 1, nnx.merge(step_fn.graphdef, trainable, frozen), opt_state,
                    {"step": k + 1, "next_batch": k + 1, "stage": stage, "config": cfg.fingerprint("model")})
        if done:
            break
    ck.close()
    logger.close()
    if (stop_after is None or start >= total or stop_after >= total) and jax.process_index() == 0:
        with open(os.path.join(ckpt_dir, "DONE"), "w") as f:
            json.dump({"steps": total, "truncated_rows": loader.truncated}, f)
    return ckpt_dir


def batch_valid_tokens(batch) -> np.ndarray:
    return np.asarray(jax.device_get(jnp.sum(batch["text_valid"])))
