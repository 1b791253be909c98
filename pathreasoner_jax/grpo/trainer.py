"""`pathreasoner grpo`: knowledge-aware GRPO from an SFT checkpoint, with the slide.

The policy starts from the SFT checkpoint (loaded — the reference builds the state dict
and never loads it: defect 2) and sees the slide in every rollout and update (the
reference's RL policy is a text-only LLM: defect 1). Prompts have one fixed shape per
run (prompt length bucket × sample_num patches), so rollout and update compile once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from pathreasoner_jax.checkpoint import Checkpointer, restore_params
from pathreasoner_jax.cli import UserError
from pathreasoner_jax.data.prompts import PromptBuilder
from pathreasoner_jax.grpo.iteration import GRPOState, grpo_iteration
from pathreasoner_jax.grpo.rewards import build_token_tables, compile_lexicon, compute_rewards
from pathreasoner_jax.grpo.step import make_grpo_step
from pathreasoner_jax.metrics_log import MetricsLogger, print0
from pathreasoner_jax.runtime import Runtime
from pathreasoner_jax.sft.step import trainable_filter

log = logging.getLogger(__name__)


def final_checkpoint(rt: Runtime) -> str:
    """The last trained model's checkpoint: GRPO's if present, else the last SFT stage's
    (the path may not exist yet; callers check)."""
    grpo = rt.path("checkpoints", "grpo")
    return grpo if os.path.isdir(grpo) else default_init(rt)


def default_init(rt: Runtime) -> str:
    for stage in ("sft_pseudobag", "sft"):
        d = rt.path("checkpoints", stage)
        if os.path.exists(os.path.join(d, "DONE")):
            return d
    return rt.path("checkpoints", "sft")


def make_semantic_scorer(rt: Runtime, prompts: PromptBuilder, judge_model=None):
    """Host-side semantic scores (`judge`: the endpoint; `self`: the frozen reference model)
    of the completions' <answer> spans; None for `rouge`, which runs on device."""
    from pathreasoner_jax.grpo.rewards_text import answer_texts
    cfg = rt.cfg.rewards
    if cfg.semantic == "rouge":
        return None
    if cfg.semantic == "judge":
        from pathreasoner_jax.grpo.judge import Judge
        fn = Judge.from_config(cfg, cache_path=rt.path("judge_cache.jsonl")).score_batch
    elif cfg.semantic == "self":
        if judge_model is None:
            raise UserError("rewards.semantic=self needs the frozen reference model")
        from pathreasoner_jax.grpo.self_judge import SelfJudge
        fn = SelfJudge(rt.tokenizer, judge_model, pad_id=rt.ids.pad).score_texts
    else:
        raise UserError(f"rewards.semantic={cfg.semantic!r}: choose rouge, judge or self")

    def score(rollout, batch, group):
        texts = [prompts.row_text(int(k)) for k in np.repeat(np.asarray(batch["row_key"]), group)]
        answers = answer_texts(rt.tokenizer, np.asarray(rollout["tokens"]), np.asarray(rollout["mask"]))
        return jnp.asarray(fn([q for q, _ in texts], [a for _, a in texts], answers), jnp.float32)
    return score


def make_reward_fn(rt: Runtime, entities, prompts: PromptBuilder, judge_model=None):
    """Rewards of SPEC §6 for a rollout: on device, except `judge`/`self` semantic scores.

    `reward_fn(rollout, prompt_batch)`: G, the completions per prompt, is read off the shapes.
    """
    cfg = rt.cfg.rewards
    tables = build_token_tables(rt.tokenizer, rt.ids, rt.model_cfg.llm.vocab_size)
    names = entities.names
    surfaces = [(s, i) for i, e in enumerate(entities["entities"]) for s in [e["name"]] + list(e.get("synonyms", []))]
    lex = compile_lexicon(rt.tokenizer, surfaces, max(len(names), 1))
    sim = jnp.asarray(entities.sim_matrix() if names else np.zeros((1, 1), np.float32))
    judge = make_semantic_scorer(rt, prompts, judge_model)

    def reward_fn(rollout, batch):
        group = rollout["tokens"].shape[0] // batch["ids"].shape[0]
        rep = lambda x: jnp.repeat(x, group, axis=0)  # noqa: E731
        sem = judge(rollout, batch, group) if judge else None
        return compute_rewards(rollout["tokens"], rollout["mask"], rep(batch["gt_entities"]), sim, tables, lex,
                               rep(batch["ref_ids"]), rep(batch["ref_mask"]), sem, alpha=cfg.alpha,
                               beta=cfg.beta, semantic="rouge" if judge is None else cfg.semantic)
    return reward_fn


def train_grpo(rt: Runtime, force: bool = False, stop_after: int | None = None) -> str:
    from pathreasoner_jax.data.store import SampleSource, SlideStore, load_entities

    cfg, g = rt.cfg, rt.cfg.grpo
    ckpt_dir = rt.path("checkpoints", "grpo")
    if os.path.exists(os.path.join(ckpt_dir, "DONE")) and not force:
        print0(f"grpo already finished ({ckpt_dir}); use --force to redo")
        return ckpt_dir
    if force and os.path.isdir(ckpt_dir) and jax.process_index() == 0:
        shutil.rmtree(ckpt_dir)
    init_from = g.init_from or default_init(rt)
    if not os.path.isdir(init_from):
        raise UserError(f"{init_from}: SFT checkpoint not found (run `pathreasoner sft` first or set grpo.init_from)")
    from pathreasoner_jax.memory import report
    report(cfg, rt.mesh, rt.model_cfg, log=print0)
    model = rt.build_model()
    restore_params(init_from, model)  # the SFT weights: also the frozen reference policy
    lora = rt.model_cfg.lora.enabled
    is_trainable = trainable_filter(cfg.sft, lora)
    step, trainable, frozen, opt_state, ref_trainable = make_grpo_step(model, g, is_trainable, rt.mesh, lora)
    ck = Checkpointer(ckpt_dir, g.keep_last)
    start = 0
    if ck.latest_step() is not None:
        trainable, frozen, opt_state, meta = ck.resume(step.graphdef, trainable, frozen, opt_state, is_trainable)
        start = meta["step"]
        print0(f"grpo: resuming at step {start}")
    entities = load_entities(rt.prep_dir)
    prompts = PromptBuilder(rt, SampleSource(rt.prep_dir, "train"), SlideStore(rt.prep_dir), entities)
    reward_fn = make_reward_fn(rt, entities, prompts,
                               judge_model=nnx.merge(step.graphdef, ref_trainable, frozen))
    state = GRPOState(trainable, frozen, opt_state, ref_trainable)
    logger = MetricsLogger(rt.run_dir, "grpo")
    logger.truncate_after(start)
    key = jax.random.key(cfg.run.seed + 1)
    bar = tqdm(range(start, g.steps), initial=start, total=g.steps, desc="grpo", disable=not cfg.run.progress)
    for k in bar:
        def next_prompts(attempt: int, k=k):
            base = (k * g.max_sampling_tries + attempt) * g.prompts_per_step
            return prompts.batch(list(range(base, base + g.prompts_per_step)))
        state, m = grpo_iteration(step, state, next_prompts, reward_fn, jax.random.fold_in(key, k), g, rt.ids)
        logger.log(k + 1, m)
        bar.set_postfix(reward=f"{m['reward/total_mean']:.3f}", kl=f"{m.get('kl', 0.0):.4f}")
        done = k + 1 == g.steps or (stop_after is not None and k + 1 >= stop_after)
        if (k + 1) % g.checkpoint_every == 0 or done:
            ck.save(k + 1, nnx.merge(step.graphdef, state.trainable, state.frozen), state.opt_state,
                    {"step": k + 1, "init_from": os.path.abspath(init_from), "config": cfg.fingerprint("model")})
        if done:
            break
    ck.close()
    logger.close()
    finished = stop_after is None or stop_after >= g.steps or start >= g.steps
    if finished and jax.process_index() == 0:
        with open(os.path.join(ckpt_dir, "DONE"), "w") as f:
            json.dump({"steps": g.steps, "init_from": os.path.abspath(init_from)}, f)
    return ckpt_dir
