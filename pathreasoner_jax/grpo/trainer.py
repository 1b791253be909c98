"""`pathreasoner grpo`: knowledge-aware GRPO from an SFT checkpoint, with the slide.

The policy starts from the SFT checkpoint (loaded — the reference builds the state dict
and never loads it: defect 2) and sees the slide in every rollout and update (the
reference's RL policy is a text-only LLM: defect 1). Prompts have one fixed shape per
run (prompt length bucket × sample_num patches), so rollout and update compile once.
An iteration whose update was skipped (non-finite rewards, loss or gradients) counts in
`skipped_steps`; more than grpo.max_nonfinite_steps in a row stop the stage with a
one-line error (train/stage.py NonFiniteGuard). Judge failures, when the reward function
counts them (`reward_fn.failure_counts()`, cumulative), are logged as
`judge/failures/<kind>` and their total `judge/failures`.
"""
from __future__ import annotations

import logging
import os

import jax
from flax import nnx

from pathreasoner_jax.checkpoint import Checkpointer, restore_params
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.progress import Progress
from pathreasoner_jax.data.prompts import PromptBuilder
from pathreasoner_jax.grpo.iteration import GRPOState, grpo_iteration
from pathreasoner_jax.grpo.reward_fn import make_reward_fn
from pathreasoner_jax.grpo.step import make_grpo_step
from pathreasoner_jax.run_layout import GRPO
from pathreasoner_jax.runtime import Runtime
from pathreasoner_jax.train.params import trainable_filter
from pathreasoner_jax.train.stage import NonFiniteGuard, finish, open_logger, open_stage, resume

log = logging.getLogger(__name__)


def train_grpo(rt: Runtime, force: bool = False, stop_after: int | None = None) -> str:
    from pathreasoner_jax.data.store import SampleSource, SlideStore, load_entities

    cfg, g, layout = rt.cfg, rt.cfg.grpo, rt.layout
    if not open_stage(rt, GRPO, force):
        return layout.checkpoint(GRPO)
    init_from = layout.grpo_init()
    if not os.path.isdir(init_from):
        raise UserError(f"{init_from}: SFT checkpoint not found (run `pathreasoner sft` first or set grpo.init_from)")
    model = rt.build_model()
    restore_params(init_from, model)  # the SFT weights: also the frozen reference policy
    lora = rt.model_cfg.lora.enabled
    is_trainable = trainable_filter(cfg.sft, lora)
    step, trainable, frozen, opt_state, ref_trainable = make_grpo_step(model, g, is_trainable, rt.mesh, lora)
    ck = Checkpointer(layout.checkpoint(GRPO), g.keep_last)
    trainable, frozen, opt_state, meta = resume(ck, GRPO, step.graphdef, trainable, frozen, opt_state,
                                                is_trainable)
    start = meta["step"]
    guard = NonFiniteGuard(GRPO, "grpo.max_nonfinite_steps", g.max_nonfinite_steps, ck, meta)
    entities = load_entities(layout.prep_dir)
    prompts = PromptBuilder(rt, SampleSource(layout.prep_dir, "train"), SlideStore(layout.prep_dir), entities)
    reward_fn = make_reward_fn(rt, entities, prompts,
                               judge_model=nnx.merge(step.graphdef, ref_trainable, frozen))
    state = GRPOState(trainable, frozen, opt_state, ref_trainable)
    logger = open_logger(rt, GRPO, start)
    key = jax.random.key(cfg.run.seed + 1)
    bar = Progress("grpo", g.steps, start, enabled=cfg.run.progress, unit="step")
    try:
        for k in range(start, g.steps):
            def next_prompts(attempt: int, k=k):
                base = (k * g.max_sampling_tries + attempt) * g.prompts_per_step
                return prompts.batch(list(range(base, base + g.prompts_per_step)))
            first = state.jitted is None
            if first:
                bar.compiling("the rollout and the update")
            state, m = grpo_iteration(step, state, next_prompts, reward_fn, jax.random.fold_in(key, k), g, rt.ids)
            if first:
                bar.compiled()
            guard.update(m.get("skipped", 0.0) > 0)
            m = {**m, "learning_rate": float(step.schedule(k)), "skipped_steps": guard.total,
                 **judge_failures(reward_fn)}
            logger.log(k + 1, m)
            bar.update(1, restart_rate=first, reward=f"{m['reward']:.3f}", kl=f"{m.get('kl', 0.0):.4f}")
            done = k + 1 == g.steps or (stop_after is not None and k + 1 >= stop_after)
            guard.check(k + 1, last=done, what="rewards, loss or gradients")
            if (k + 1) % g.checkpoint_every == 0 or done:
                ck.save(k + 1, nnx.merge(step.graphdef, state.trainable, state.frozen), state.opt_state,
                        {"step": k + 1, "init_from": os.path.abspath(init_from), "config": cfg.fingerprint("model"),
                         **guard.meta()})
            if done:
                break
    finally:
        bar.close()
        ck.close()
        logger.close()
    finish(rt, GRPO, stop_after is None or stop_after >= g.steps or start >= g.steps,
           {"steps": g.steps, "init_from": os.path.abspath(init_from)})
    return ck.directory


def judge_failures(reward_fn) -> dict:
    """`judge/failures/<kind>` and `judge/failures` (cumulative) when the reward function
    counts its judge's failures (a `failure_counts()` attribute); {} otherwise."""
    counts = getattr(reward_fn, "failure_counts", None)
    if not callable(counts):
        return {}
    got = {str(kind): int(n) for kind, n in (counts() or {}).items()}
    return {**{f"judge/failures/{kind}": n for kind, n in sorted(got.items())}, "judge/failures": sum(got.values())}
