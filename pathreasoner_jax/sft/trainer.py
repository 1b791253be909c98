"""SFT orchestration: data, model, checkpoints, logging around the pure step in step.py.

Stages: `sft` (plain masked SFT) and `sft_pseudobag` (sft.pseudo_bag=true, starting from
the `sft` stage's final checkpoint unless sft.init_from says otherwise). A rerun of a
finished stage is a no-op unless forced; an interrupted one resumes from its last
checkpoint with the same batches and RNG (both are functions of the step). A step with a
non-finite loss or gradients is skipped by the jitted update; more than
sft.max_nonfinite_steps in a row stop the stage (train/stage.py NonFiniteGuard).

Metric names follow TRL's SFTTrainer: `loss`, `grad_norm`, `learning_rate`, `num_tokens`
(loss tokens so far), `epoch`, and `eval_loss` (sft/validation.py) every sft.eval_every
steps and at the last step; ours besides: tokens_per_s, step_time_s, mfu, skipped.
"""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.checkpoint import Checkpointer, restore_params
from pathreasoner_jax.data.encode import ExampleEncoder
from pathreasoner_jax.core.progress import Progress
from pathreasoner_jax.data.loader import SFTLoader
from pathreasoner_jax.flops import device_peak_flops, train_flops_per_token
from pathreasoner_jax.metrics_log import print0
from pathreasoner_jax.runtime import Runtime
from pathreasoner_jax.sft.prior import load_priors
from pathreasoner_jax.sft.step import make_sft_step
from pathreasoner_jax.sft.validation import ValidationLoss
from pathreasoner_jax.train.stage import NonFiniteGuard, finish, open_logger, open_stage, resume, shard_rows

log = logging.getLogger(__name__)


def train_sft(rt: Runtime, force: bool = False, stop_after: int | None = None) -> str:
    """Runs (or resumes) the SFT stage; returns its checkpoint directory."""
    from pathreasoner_jax.data.store import SampleSource, SlideStore

    cfg, layout = rt.cfg, rt.layout
    stage = layout.sft_stage
    if not open_stage(rt, stage, force):  # also the memory report: stops when it cannot fit
        return layout.checkpoint(stage)
    samples = SampleSource(layout.prep_dir, "train")
    slides = SlideStore(layout.prep_dir)
    priors = load_priors(layout.prior_path, slides, cfg.data.num_clusters) if cfg.sft.pseudo_bag else None
    encoder = ExampleEncoder(rt.tokenizer, rt.ids.image, cfg.data.sample_num, cfg.sft.trajectory_mask_mode,
                             cfg.sft.trajectory_mask_rate, cfg.sft.pseudo_bag_q if priors else 0.0, priors)
    loader = SFTLoader(samples, slides, encoder, cfg.sft.batch_size, cfg.sft.epochs, cfg.run.seed,
                       cfg.data.length_buckets, rt.ids.pad)
    total = cfg.sft.max_steps or len(loader)
    model = rt.build_model()
    init_from = layout.sft_init()
    ck = Checkpointer(layout.checkpoint(stage), cfg.sft.keep_last)
    if init_from and ck.latest_step() is None:
        restore_params(init_from, model)
        print0(f"{stage}: initialised from {init_from}")
    step_fn, trainable, frozen, opt_state = make_sft_step(model, cfg.sft, rt.model_cfg.lora.enabled, rt.mesh, total)
    trainable, frozen, opt_state, meta = resume(ck, stage, step_fn.graphdef, trainable, frozen, opt_state,
                                                step_fn.filter)
    start = meta["step"]
    guard = NonFiniteGuard(stage, "sft.max_nonfinite_steps", cfg.sft.max_nonfinite_steps, ck, meta)
    logger = open_logger(rt, stage, start)
    validate = ValidationLoss(rt, step_fn, slides, stage) if cfg.sft.eval_every else None
    flops_tok = train_flops_per_token(rt.model_cfg, max(cfg.data.length_buckets))
    peak = device_peak_flops()
    base_key = jax.random.key(cfg.run.seed)
    jitted, num_tokens = None, float(meta.get("num_tokens", 0.0))
    bar = Progress(stage, total, start, enabled=cfg.run.progress, unit="step")
    batches = loader.iterate(start, total, cfg.data.num_workers)
    try:
        t0 = time.perf_counter()
        for k, host_batch in batches:
            batch = shard_rows(host_batch, rt.mesh)
            first = jitted is None
            if first:
                bar.compiling("the train step")
                jitted = step_fn.jitted(trainable, frozen, opt_state, batch)
            trainable, opt_state, m = jitted(trainable, frozen, opt_state, batch,
                                             jax.random.fold_in(base_key, k), jnp.int32(k))
            loss, skipped = float(m["loss"]), bool(float(m["skipped"]))
            if first:
                bar.compiled()
            guard.update(skipped)
            dt = time.perf_counter() - t0
            tokens = float(np.sum(batch_valid_tokens(batch)))
            num_tokens += float(m["loss_tokens"])
            done = k + 1 == total or (stop_after is not None and k + 1 >= stop_after)
            rec = {"loss": loss, "learning_rate": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                   "num_tokens": num_tokens, "epoch": (k + 1) * cfg.sft.batch_size / len(samples),
                   "tokens_per_s": tokens / dt, "step_time_s": dt,
                   "mfu": (flops_tok * tokens / dt / peak) if peak else None,
                   "skipped": float(skipped), "skipped_steps": guard.total}
            if validate is not None and ((k + 1) % cfg.sft.eval_every == 0 or done):
                rec["eval_loss"] = validate(trainable, frozen)
            logger.log(k + 1, rec)
            bar.update(1, restart_rate=first, loss=f"{loss:.4f}", tok_s=f"{tokens / dt:.0f}")
            guard.check(k + 1, last=done)  # raises past the limit, or when the last step was skipped
            if (k + 1) % cfg.sft.checkpoint_every == 0 or done:
                ck.save(k + 1, nnx.merge(step_fn.graphdef, trainable, frozen), opt_state,
                        {"step": k + 1, "next_batch": k + 1, "stage": stage, "config": cfg.fingerprint("model"),
                         "num_tokens": num_tokens, **guard.meta()})
            if done:
                break
            t0 = time.perf_counter()  # the next step's time includes waiting for its batch
    finally:
        batches.close()
        bar.close()
        ck.close()
        logger.close()
    finish(rt, stage, stop_after is None or start >= total or stop_after >= total,
           {"steps": total, "truncated_rows": loader.truncated})
    return ck.directory


def batch_valid_tokens(batch) -> np.ndarray:
    return np.asarray(jax.device_get(jnp.sum(batch["text_valid"])))
