"""One GRPO iteration: rollout → rewards → advantages → μ inner updates.

Kept apart from the trainer (data, checkpoints, logging) so that tests can drive it with
a programmatic reward. Everything here runs on device except the Python control flow
of DAPO's dynamic sampling, which only selects whole groups.

Non-finite rewards (after shaping and the KL fold) take their whole group out of the
update (advantage 0, tokens masked; counted in `nonfinite_rewards`); when every group
is out, the update is skipped (params and optimizer state unchanged, `skipped` = 1), as
is any update whose loss or gradients are not finite (grpo/step.py).

Metric names follow TRL's GRPOTrainer: `reward`, `reward_std`, `rewards/<name>/mean|std`,
`completions/{mean,min,max}_length`, `completions/clipped_ratio` (truncated share),
`clip_ratio/{low,high,region}_mean`, `kl`, `entropy`, `frac_reward_zero_std`; the
trainer adds `learning_rate`. `first_epoch/…` is the first inner epoch (ratio exactly 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.grpo.advantages import (dynamic_sampling_keep, fold_kl_into_rewards, group_advantages,
                                              zero_std_groups)
from pathreasoner_jax.grpo.losses import mask_truncated, overlong_penalty
from pathreasoner_jax.grpo.step import GRPOStep, assemble


@dataclass
class GRPOState:
    trainable: Any
    frozen: Any
    opt_state: Any
    ref_trainable: Any
    jitted: tuple = field(default=None)


def take_groups(prompts: dict, rollout: dict, rewards: dict, groups: np.ndarray, g: int):
    rows = (groups[:, None] * g + np.arange(g)[None]).reshape(-1)
    pick = lambda tree, idx: jax.tree.map(lambda x: x[idx], tree)  # noqa: E731
    return pick(prompts, groups), pick(rollout, rows), pick(rewards, rows)


def concat(trees: list):
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *trees)


def _rollout(step: GRPOStep, state: GRPOState, prompts: dict, key, cfg, ids) -> dict:
    model = nnx.merge(step.graphdef, state.trainable, state.frozen)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k, group_size=cfg.group_size, shared_prefix=True)
    return sample(model, prompts["ids"], prompts["text_valid"], prompts["features"], prompts["patch_valid"],
                  key, params=params, eos_id=ids.eos, pad_id=ids.pad)


def rollout_and_score(step: GRPOStep, state: GRPOState, prompts: dict, reward_fn: Callable, key, cfg, ids):
    roll = _rollout(step, state, prompts, key, cfg, ids)
    return roll, reward_fn(roll, prompts, cfg.group_size)


def grpo_iteration(step: GRPOStep, state: GRPOState, next_prompts: Callable[[int], dict], reward_fn: Callable,
                   key, cfg, ids) -> tuple[GRPOState, dict]:
    """`next_prompts(try)` gives a prompt batch (B rows); `reward_fn(rollout, prompts, G)` a
    dict of (B·G,) arrays with at least `total`. Returns the new state and metrics."""
    g = cfg.group_size
    if state.jitted is None:
        state.jitted = (*step.jit_all(state.trainable, state.frozen, state.opt_state),
                        step.jit_on_policy_update(state.trainable, state.frozen, state.opt_state))
    # one dropout key for old log-probs and every inner epoch: the first ratio is exactly 1
    rng = None if cfg.disable_dropout else jax.random.fold_in(key, 10_000)
    prompts = next_prompts(0)
    tries = 1
    if not cfg.dynamic_sampling:
        rollout = _rollout(step, state, prompts, jax.random.fold_in(key, 0), cfg, ids)
        # The log-prob passes need no rewards: dispatched first, they run on the device while
        # the host scores the completions (the judge's HTTP calls included).
        seq, old_logp, ref_logp = _logprob_passes(state, prompts, rollout, cfg, ids, rng)
        rewards = reward_fn(rollout, prompts, g)
    else:
        rollout, rewards = rollout_and_score(step, state, prompts, reward_fn, jax.random.fold_in(key, 0), cfg, ids)
        n_prompts = prompts["ids"].shape[0]
        keep = np.asarray(dynamic_sampling_keep(rewards["total"].reshape(-1, g)))
        parts = [take_groups(prompts, rollout, rewards, np.flatnonzero(keep), g)]
        spare = [take_groups(prompts, rollout, rewards, np.flatnonzero(~keep), g)]
        have = int(keep.sum())
        while have < n_prompts and tries < cfg.max_sampling_tries:
            p2 = next_prompts(tries)
            r2, w2 = rollout_and_score(step, state, p2, reward_fn, jax.random.fold_in(key, tries), cfg, ids)
            k2 = np.asarray(dynamic_sampling_keep(w2["total"].reshape(-1, g)))
            parts.append(take_groups(p2, r2, w2, np.flatnonzero(k2)[: n_prompts - have], g))
            spare.append(take_groups(p2, r2, w2, np.flatnonzero(~k2), g))
            have += int(min(k2.sum(), n_prompts - have))
            tries += 1
        if have < n_prompts:  # bounded tries: top up with zero-variance groups (advantage 0)
            pool = concat(spare)
            parts.append(take_groups(*pool, np.arange(n_prompts - have), g))
        prompts, rollout, rewards = concat([p[0] for p in parts]), concat([p[1] for p in parts]), \
            concat([p[2] for p in parts])
        seq, old_logp, ref_logp = _logprob_passes(state, prompts, rollout, cfg, ids, rng)
    _, _, upd_fn, on_policy_fn = state.jitted
    on_policy = old_logp is None
    total = rewards["total"]
    if cfg.overlong_buffer > 0:
        total = total + overlong_penalty(rollout["lengths"], cfg.max_new_tokens, cfg.overlong_buffer,
                                         cfg.overlong_penalty)
    if cfg.kl_mode == "reward":
        total = fold_kl_into_rewards(total, old_logp, ref_logp, seq["mask"], cfg.kl_coef)
    total, adv, n_flat, bad_rows = finite_group_advantages(total, g, cfg.adv_scale)
    seq["mask"] = seq["mask"] * (~bad_rows)[:, None]
    if cfg.mask_truncated:
        seq["mask"] = mask_truncated(seq["mask"], rollout["truncated"])
    epochs = []
    for _ in range(cfg.inner_epochs):
        if on_policy:
            state.trainable, state.opt_state, m = on_policy_fn(state.trainable, state.frozen, state.opt_state, seq,
                                                               ref_logp, adv, rng)
        else:
            state.trainable, state.opt_state, m = upd_fn(state.trainable, state.frozen, state.opt_state, seq,
                                                         old_logp, ref_logp, adv, rng)
        epochs.append(m)
    # the first epoch's ratio is exactly 1 (same params, same dropout key as old_logp)
    metrics = {f"first_epoch/{k}": v for k, v in epochs[0].items()} | dict(epochs[-1])
    skips = jnp.stack([m["skipped"] for m in epochs])
    metrics.update({"skipped": jnp.max(skips), "skipped_updates": jnp.sum(skips),
                    "nonfinite_rewards": jnp.sum(bad_rows)})
    for name, r in rewards.items():  # over the finite rewards
        r = jnp.where(jnp.isfinite(r), r, jnp.nan)
        mean, std = jnp.nanmean(r), (jnp.nanstd(r, ddof=1) if r.shape[0] > 1 else 0.0)
        if name == "total":
            metrics.update({"reward": mean, "reward_std": std})
        else:
            metrics.update({f"rewards/{name}/mean": mean, f"rewards/{name}/std": std})
    lengths = rollout["lengths"].astype(jnp.float32)
    metrics.update({"frac_reward_zero_std": n_flat / (total.shape[0] // g), "sampling_tries": tries,
                    "completions/mean_length": jnp.mean(lengths), "completions/min_length": jnp.min(lengths),
                    "completions/max_length": jnp.max(lengths),
                    "completions/clipped_ratio": jnp.mean(rollout["truncated"].astype(jnp.float32)),
                    "reward_with_shaping": jnp.sum(total) / jnp.maximum(jnp.sum(~bad_rows), 1)})
    return state, {trl_name(k): float(v) for k, v in metrics.items()}


def _logprob_passes(state: GRPOState, prompts: dict, rollout: dict, cfg, ids, rng):
    """→ (training rows, old log-probs, reference log-probs), dispatched without waiting.
    μ = 1: the update's own forward gives the old log-probs (None here, no separate pass),
    unless the KL is folded into the rewards, which needs them before the update."""
    lp_fn, ref_fn, _, _ = state.jitted
    seq = assemble(prompts, rollout, cfg.group_size, ids.image, cfg.shared_prefix_update)
    on_policy = cfg.inner_epochs == 1 and cfg.kl_mode != "reward"
    old_logp = None if on_policy else lp_fn(state.trainable, state.frozen, seq, rng)
    ref_logp = ref_fn(state.ref_trainable, state.frozen, seq) if cfg.kl_mode != "none" else None
    if ref_logp is None:
        ref_logp = jnp.zeros(seq["mask"].shape, jnp.float32) if old_logp is None else old_logp
    return seq, old_logp, ref_logp


# the update's own names → TRL's GRPOTrainer names (the rest already match: loss, kl,
# entropy, grad_norm, frac_reward_zero_std)
_TRL = {"clip_ratio_low": "clip_ratio/low_mean", "clip_ratio_high": "clip_ratio/high_mean",
        "clip_ratio": "clip_ratio/region_mean"}


def trl_name(key: str) -> str:
    head, _, tail = key.rpartition("/")
    if head == "first_epoch":
        return f"first_epoch/{_TRL.get(tail, tail)}"
    return _TRL.get(key, key)


def finite_group_advantages(total, g: int, scale: str):
    """Group advantages with every group holding a non-finite reward taken out → (total
    with those rows 0, advantages (0 for those groups; all NaN when no group is left, so
    the update skips), count of zero-variance finite groups, (B,) bool rows taken out)."""
    bad_groups = jnp.any(~jnp.isfinite(total).reshape(-1, g), axis=1)
    bad_rows = jnp.repeat(bad_groups, g)
    total = jnp.where(bad_rows, 0.0, total)
    adv, _ = group_advantages(total, g, scale)
    adv = jnp.where(jnp.all(bad_groups), jnp.nan, jnp.where(bad_rows, 0.0, adv))
    n_flat = jnp.sum(zero_std_groups(total.reshape(-1, g)) & ~bad_groups)
    return total, adv, n_flat, bad_rows
