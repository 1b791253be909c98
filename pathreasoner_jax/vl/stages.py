"""Patho-R1's three stages on images, on the slide model's pure steps:

- `vl_pretrain` — continued pretraining, the captioning loss on figure–caption pairs;
  `vl.pretrain_mode` picks what trains: `projector` (the patch merger; LLM and vision tower
  frozen), `vision+projector`, or `full` (LLM too: LoRA only when vl.lora_rank > 0).
- `vl_sft` — SFT on image CoT conversations (the LLM — or its LoRA — and the merger; the
  vision tower too unless vl.sft_freeze_vision), CoT masking as the slide SFT's.
- `vl_grpo` — GRPO/DAPO (grpo.* settings) on MCQs with the MCQ reward: accuracy of the
  `<answer>` letter + vl.format_weight × format. The shared-prefix sampler takes the
  image tokens; `grpo_iteration` is the slide learner's.

Each stage starts from the previous finished one (`RunLayout.vl_init`); batches are a
function of (seed, step), so an interrupted stage resumes from its last checkpoint with
the same batches; each process places its share of a batch's rows (`host_rows`). The same SFTStep / GRPOStep as the slide model, so steps are jitted
with explicit shardings, micro-batch exact, and skip non-finite updates.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.checkpoint import Checkpointer
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.progress import Progress
from pathreasoner_jax.metrics_log import print0
from pathreasoner_jax.models.layers import LoRAParam
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sft.step import SFTStep
from pathreasoner_jax.train.params import init_opt_state, make_optimizer
from pathreasoner_jax.train.stage import NonFiniteGuard, finish, host_rows, open_logger, resume, shard_rows
from pathreasoner_jax.vl.encode import collate
from pathreasoner_jax.vl.mcq import mcq_rewards
from pathreasoner_jax.vl.records import LETTERS, VLStore

PRETRAIN_MODES = ("projector", "vision+projector", "full")
STORE_OF = {"vl_pretrain": "caption", "vl_sft": "sft", "vl_grpo": "mcq"}  # data_prep/vl_data.py stores


def trainable_filter(stage: str, v):
    """nnx filter of what `stage` trains (module docstring)."""
    def llm_part(var):
        return isinstance(var, LoRAParam) if v.lora_rank > 0 else True

    def is_trainable(path, var) -> bool:
        if not isinstance(var, nnx.Param):
            return False
        top, sub = str(path[0]), str(path[1]) if len(path) > 1 else ""
        merger = top == "visual" and sub == "merger"
        if stage == "vl_pretrain":
            if v.pretrain_mode == "projector":
                return merger
            if v.pretrain_mode == "vision+projector":
                return top == "visual"
            return top == "visual" or llm_part(var)
        if top == "visual":
            return merger or not v.sft_freeze_vision
        return llm_part(var)
    return is_trainable


def stage_rows(n: int, batch: int, seed: int, step: int, salt: int) -> np.ndarray:
    """The rows of batch `step`: epoch e reads permutation (seed, salt, e) in order."""
    idx = np.arange(step * batch, (step + 1) * batch)
    epochs = idx // n
    perms = {e: np.random.default_rng([seed, salt, int(e)]).permutation(n) for e in np.unique(epochs)}
    return np.asarray([perms[e][i % n] for e, i in zip(epochs, idx)])


def vl_source(rt, stage: str, split: str = "train"):
    d = os.path.join(rt.layout.vl_data_dir, STORE_OF[stage])
    if not os.path.isfile(os.path.join(d, "manifest.json")):
        raise UserError(f"{d}: no VL store (run `pathreasoner vl-data` first)")
    src = VLStore(d).split(split)
    if len(src) == 0:
        raise UserError(f"{d}: split {split!r} is empty")
    return src


def _open(rt, stage: str, force: bool):
    """(init checkpoint, Checkpointer) or None when the stage already finished."""
    layout = rt.layout
    if layout.stage_done(stage) and not force:
        print0(f"{stage} already finished ({layout.checkpoint(stage)}); use --force to redo")
        return None
    if force and os.path.isdir(layout.checkpoint(stage)) and jax.process_index() == 0:
        import shutil
        shutil.rmtree(layout.checkpoint(stage))
    return layout.vl_init(stage), Checkpointer(layout.checkpoint(stage), rt.cfg.vl.keep_last)


def train_supervised(rt, stage: str, force: bool = False, stop_after: int | None = None) -> str:
    """vl_pretrain or vl_sft: (or resumes) the stage; returns its checkpoint directory."""
    v, seed = rt.cfg.vl, rt.cfg.run.seed
    total = v.pretrain_steps if stage == "vl_pretrain" else v.sft_steps
    opened = _open(rt, stage, force)
    if opened is None or total == 0:
        return rt.layout.checkpoint(stage)
    init_from, ck = opened
    src = vl_source(rt, stage)
    model = rt.build_model(init_from)
    is_trainable = trainable_filter(stage, v)
    graphdef, trainable, frozen = nnx.split(model, is_trainable, ...)
    if not jax.tree.leaves(trainable):
        raise UserError(f"{stage}: nothing to train (vl.pretrain_mode / vl.lora_rank)")
    lr = v.pretrain_lr if stage == "vl_pretrain" else v.sft_lr
    tx, sched = make_optimizer(lr, total, v.warmup_ratio, v.weight_decay, v.grad_clip)
    step_fn = SFTStep(graphdef, tx, sched, 1, rt.mesh, is_trainable, sft_loss)
    opt_state = init_opt_state(tx, trainable, rt.mesh)
    trainable, frozen, opt_state, meta = resume(ck, stage, graphdef, trainable, frozen, opt_state, is_trainable)
    start = meta["step"]
    guard = NonFiniteGuard(stage, "vl.max_nonfinite_steps", v.max_nonfinite_steps, ck, meta)
    logger = open_logger(rt, stage, start)
    salt = 1 if stage == "vl_pretrain" else 2

    def batch_at(k):
        rows = stage_rows(len(src), v.batch_size, seed, k, salt)
        exs = [rt.encoder.encode(src[int(i)], np.random.default_rng([seed, salt, k, j])) for j, i in enumerate(rows)]
        return collate(exs, v.max_len, v.max_patches, rt.ids.pad, rt.geom)[0]

    key, jitted = jax.random.key(seed + salt), None
    bar = Progress(stage, total, start, enabled=rt.cfg.run.progress, unit="step")
    try:
        for k in range(start, total):
            t0 = time.perf_counter()
            batch = shard_rows(host_rows(batch_at(k)), rt.mesh)
            if jitted is None:
                bar.compiling("the train step")
                jitted = step_fn.jitted(trainable, frozen, opt_state, batch)
            trainable, opt_state, m = jitted(trainable, frozen, opt_state, batch, jax.random.fold_in(key, k),
                                             jnp.int32(k))
            loss, skipped = float(m["loss"]), bool(float(m["skipped"]))
            guard.update(skipped)
            done = k + 1 == total or (stop_after is not None and k + 1 >= stop_after)
            logger.log(k + 1, {"loss": loss, "learning_rate": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                               "num_tokens": float(m["loss_tokens"]), "step_time_s": time.perf_counter() - t0,
                               "skipped": float(skipped), "skipped_steps": guard.total})
            bar.update(1, restart_rate=k == start, loss=f"{loss:.4f}")
            guard.check(k + 1, last=done)
            if (k + 1) % v.checkpoint_every == 0 or done:
                ck.save(k + 1, nnx.merge(graphdef, trainable, frozen), opt_state,
                        {"step": k + 1, "stage": stage, "init_from": init_from, **guard.meta()})
            if done:
                break
    finally:
        bar.close()
        ck.close()
        logger.close()
    finish(rt, stage, stop_after is None or stop_after >= total or start >= total,
           {"steps": total, "init_from": init_from})
    return ck.directory


class MCQPrompts:
    """Records → fixed-shape left-padded prompt batches for the sampler (a conversation's
    prompt: its turns before the last reply); MCQs add "answer" (B,) letter index and
    "num_options" (B,) for the reward."""

    def __init__(self, rt, src, shuffle_images: bool = False, seed: int = 0):
        self.rt, self.src = rt, src
        self.perm = np.random.default_rng([seed, 7]).permutation(len(src)) if shuffle_images else None

    def record(self, i: int):
        rec = self.src[i % len(self.src)]
        if self.perm is not None:  # the control: each question with another record's images
            rec = dataclasses.replace(rec, images=self.src[int(self.perm[i % len(self.src)])].images)
        return rec

    def batch(self, indices, place: bool = True) -> dict:
        v, recs = self.rt.cfg.vl, [self.record(int(i)) for i in indices]
        exs = [self.rt.encoder.encode(r, prompt_only=True) for r in recs]
        b, _ = collate(exs, v.max_len, v.max_patches, self.rt.ids.pad, self.rt.geom, left_pad=True)
        out = {k: b[k] for k in ("ids", "text_valid", "features", "patch_valid")}
        if all(r.kind == "mcq" for r in recs):
            out["answer"] = np.asarray([LETTERS.index(r.answer) for r in recs], np.int32)
            out["num_options"] = np.asarray([len(r.options) for r in recs], np.int32)
        return shard_rows(host_rows(out), self.rt.mesh) if place else out


def completions_text(tokenizer, rollout: dict) -> list[str]:
    toks, mask = np.asarray(rollout["tokens"]), np.asarray(rollout["mask"])
    return tokenizer.batch_decode([t[m].tolist() for t, m in zip(toks, mask)], skip_special_tokens=False)


def make_mcq_reward(rt):
    """reward_fn(rollout, prompts, G) → {"total", "accuracy", "format"} (B·G,) on the host."""
    def reward_fn(rollout, prompts, g):
        texts = completions_text(rt.tokenizer, rollout)
        ans = np.repeat(np.asarray(prompts["answer"]), g)
        nopt = np.repeat(np.asarray(prompts["num_options"]), g)
        r = mcq_rewards(texts, [LETTERS[a] for a in ans], [int(n) for n in nopt])
        total = r["accuracy"] + rt.cfg.vl.format_weight * r["format"]
        return {"total": jnp.asarray(total, jnp.float32), "accuracy": jnp.asarray(r["accuracy"], jnp.float32),
                "format": jnp.asarray(r["format"], jnp.float32)}
    return reward_fn


def grpo_config(cfg):
    v = cfg.vl
    return dataclasses.replace(cfg.grpo, steps=v.grpo_steps, lr=v.grpo_lr, group_size=v.group_size,
                               max_new_tokens=v.max_new_tokens, temperature=v.temperature,
                               prompts_per_step=v.grpo_prompts)


def train_vl_grpo(rt, force: bool = False, stop_after: int | None = None) -> str:
    from pathreasoner_jax.grpo.iteration import GRPOState, grpo_iteration
    from pathreasoner_jax.grpo.step import make_grpo_step
    stage, cfg = "vl_grpo", rt.cfg
    g = grpo_config(cfg)
    opened = _open(rt, stage, force)
    if opened is None or g.steps == 0:
        return rt.layout.checkpoint(stage)
    init_from, ck = opened
    prompts = MCQPrompts(rt, vl_source(rt, stage))
    model = rt.build_model(init_from)  # also the frozen reference policy
    is_trainable = trainable_filter(stage, cfg.vl)
    step, trainable, frozen, opt_state, ref_trainable = make_grpo_step(model, g, is_trainable, rt.mesh, True)
    trainable, frozen, opt_state, meta = resume(ck, stage, step.graphdef, trainable, frozen, opt_state, is_trainable)
    start = meta["step"]
    guard = NonFiniteGuard(stage, "vl.max_nonfinite_steps", cfg.vl.max_nonfinite_steps, ck, meta)
    logger = open_logger(rt, stage, start)
    reward_fn, state = make_mcq_reward(rt), GRPOState(trainable, frozen, opt_state, ref_trainable)
    key = jax.random.key(cfg.run.seed + 3)
    n = len(prompts.src)
    bar = Progress(stage, g.steps, start, enabled=cfg.run.progress, unit="step")
    try:
        for k in range(start, g.steps):
            def next_prompts(attempt: int, k=k):
                return prompts.batch(stage_rows(n, g.prompts_per_step, cfg.run.seed, k * g.max_sampling_tries + attempt,
                                                3))
            if state.jitted is None:
                bar.compiling("the rollout and the update")
            state, m = grpo_iteration(step, state, next_prompts, reward_fn, jax.random.fold_in(key, k), g, rt.ids)
            guard.update(m.get("skipped", 0.0) > 0)
            logger.log(k + 1, {**m, "learning_rate": float(step.schedule(k)), "skipped_steps": guard.total})
            bar.update(1, restart_rate=k == start, reward=f"{m['reward']:.3f}")
            done = k + 1 == g.steps or (stop_after is not None and k + 1 >= stop_after)
            guard.check(k + 1, last=done, what="rewards, loss or gradients")
            if (k + 1) % cfg.vl.checkpoint_every == 0 or done:
                ck.save(k + 1, nnx.merge(step.graphdef, state.trainable, state.frozen), state.opt_state,
                        {"step": k + 1, "stage": stage, "init_from": init_from, **guard.meta()})
            if done:
                break
    finally:
        bar.close()
        ck.close()
        logger.close()
    finish(rt, stage, stop_after is None or stop_after >= g.steps or start >= g.steps,
           {"steps": g.steps, "init_from": init_from})
    return ck.directory
