"""The reward function of a rollout (SPEC §6), assembled from the run's tokenizer, KG
entities and prompts; GRPO trains on it and `eval` scores policies with the same one.

Format, entity and `rouge` rewards run on device (`rewards.py`); the `judge` (endpoint)
and `self` (frozen reference model) semantic scores are computed on the host from the
completions' <answer> spans and passed in. The returned reward function carries
`failure_counts()` (kind → judge calls that failed and scored 0, cumulative; empty for
the other semantic rewards), which the GRPO trainer logs as `judge/failures/<kind>`.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.data.prompts import PromptBuilder
from pathreasoner_jax.grpo.rewards import build_token_tables, compile_lexicon, compute_rewards
from pathreasoner_jax.runtime import Runtime


def make_semantic_scorer(rt: Runtime, prompts: PromptBuilder, judge_model=None):
    """Host-side semantic scores (`judge`: the endpoint; `self`: the frozen reference model)
    of the completions' <answer> spans; None for `rouge`, which runs on device. The scorer
    has `failure_counts()` (the endpoint judge's failures by kind; {} for `self`)."""
    from pathreasoner_jax.text.decode import answer_texts
    cfg = rt.cfg.rewards
    if cfg.semantic == "rouge":
        return None
    counts = dict
    if cfg.semantic == "judge":
        from pathreasoner_jax.grpo.judge import Judge
        endpoint = Judge.from_config(cfg, cache_path=rt.layout.judge_cache)
        fn, counts = endpoint.score_batch, endpoint.failure_counts
    elif cfg.semantic == "self":
        if judge_model is None:
            raise UserError("rewards.semantic=self needs the frozen reference model")
        from pathreasoner_jax.grpo.self_judge import SelfJudge
        fn = SelfJudge(rt.tokenizer, judge_model, pad_id=rt.ids.pad).score_texts
    else:
        raise UserError(f"rewards.semantic={cfg.semantic!r}: choose rouge, judge or self")

    def score(rollout, batch, group: int):
        texts = [prompts.row_text(int(k)) for k in np.repeat(np.asarray(batch["row_key"]), group)]
        answers = answer_texts(rt.tokenizer, np.asarray(rollout["tokens"]), np.asarray(rollout["mask"]))
        return jnp.asarray(fn([q for q, _ in texts], [a for _, a in texts], answers), jnp.float32)
    score.failure_counts = counts
    return score


def make_reward_fn(rt: Runtime, entities, prompts: PromptBuilder, judge_model=None):
    """→ `reward_fn(rollout, prompt_batch, group_size)`: a dict of (B·G,) rewards for the
    B·G completions of a rollout over B prompts, G = `group_size` completions each.
    `reward_fn.failure_counts()`: kind → judge failures so far (see the module docstring)."""
    cfg = rt.cfg.rewards
    tables = build_token_tables(rt.tokenizer, rt.ids, rt.model_cfg.llm.vocab_size)
    names = entities.names
    surfaces = [(s, i) for i, e in enumerate(entities["entities"]) for s in [e["name"]] + list(e.get("synonyms", []))]
    lex = compile_lexicon(rt.tokenizer, surfaces, max(len(names), 1))
    judge = make_semantic_scorer(rt, prompts, judge_model)

    def reward_fn(rollout, batch, group_size: int):
        rows, prompts_n = rollout["tokens"].shape[0], batch["ids"].shape[0]
        if rows != prompts_n * group_size:
            raise ValueError(f"rollout has {rows} completions for {prompts_n} prompts × G={group_size}")
        rep = lambda x: jnp.repeat(x, group_size, axis=0)  # noqa: E731
        sem = judge(rollout, batch, group_size) if judge else None
        ctx = {k: rep(batch[k]) for k in ("gt_ids", "near_ids", "near_sim")}
        return compute_rewards(rollout["tokens"], rollout["mask"], ctx, tables, lex,
                               rep(batch["ref_ids"]), rep(batch["ref_mask"]), sem, alpha=cfg.alpha,
                               beta=cfg.beta, semantic="rouge" if judge is None else cfg.semantic,
                               format_weight=cfg.format_weight, semantic_weight=cfg.semantic_weight)
    reward_fn.failure_counts = judge.failure_counts if judge is not None else dict
    return reward_fn
