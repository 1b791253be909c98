"""Group-relative advantages (SPEC §6), the KL-in-reward fold, and DAPO's group filter.

Layout: a batch of B = N·G completions holds N groups of G completions of one prompt
each, in contiguous rows (group i is rows i·G … i·G+G−1), as the sampler returns them.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

EPS = 1e-6


def _std1(x: jax.Array, axis=None, keepdims=False) -> jax.Array:
    # unbiased (ddof=1), as torch.std and the reference; jnp.std defaults to ddof=0
    return jnp.std(x, axis=axis, ddof=1, keepdims=keepdims)


def _scale_group(r_ng: jax.Array, eps: float) -> jax.Array:
    return _std1(r_ng, axis=1, keepdims=True) + eps


def _scale_batch(r_ng: jax.Array, eps: float) -> jax.Array:
    return jnp.broadcast_to(_std1(r_ng) + eps, (r_ng.shape[0], 1))


def _scale_none(r_ng: jax.Array, eps: float) -> jax.Array:
    return jnp.ones((r_ng.shape[0], 1), r_ng.dtype)


# name → ((N, G) rewards, eps) → (N, 1) divisor of r − mean_group
ADV_SCALES: dict[str, Callable] = {"group": _scale_group, "batch": _scale_batch, "none": _scale_none}


def zero_std_groups(rewards_ng: jax.Array) -> jax.Array:
    """(N,) bool: every reward of the group equal (exactly, so rounding in a mean cannot leak)."""
    return jnp.all(rewards_ng == rewards_ng[:, :1], axis=1)


def group_advantages(rewards_b: jax.Array, group_size: int, scale: str = "group",
                     eps: float = EPS) -> tuple[jax.Array, jax.Array]:
    """(B,) rewards → ((B,) advantages, int32 count of zero-variance groups).

    A = (r − mean_group) / (s + eps), s = the group's std (`group`, the reference), the
    whole batch's std (`batch`, as TRL's scale_rewards="batch") or 1 (`none`, Dr.GRPO: no
    scaling). Std is unbiased (ddof=1). Groups whose rewards are all equal get A = 0.
    """
    if group_size < 2:
        raise ValueError("group_size must be ≥ 2 (the unbiased std of one sample is undefined)")
    if rewards_b.shape[0] % group_size:
        raise ValueError(f"batch {rewards_b.shape[0]} is not a multiple of group_size {group_size}")
    if scale not in ADV_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; known: {sorted(ADV_SCALES)}")
    r = rewards_b.astype(jnp.float32).reshape(-1, group_size)
    adv = (r - r.mean(axis=1, keepdims=True)) / ADV_SCALES[scale](r, eps)
    flat = zero_std_groups(r)
    adv = jnp.where(flat[:, None], 0.0, adv)
    return adv.reshape(-1), flat.sum().astype(jnp.int32)


def dynamic_sampling_keep(rewards_ng: jax.Array) -> jax.Array:
    """(N,) bool, DAPO's dynamic sampling: keep the groups whose rewards are not all equal."""
    return ~zero_std_groups(rewards_ng)


def kl_token_rewards(rewards_b: jax.Array, logp_bt: jax.Array, ref_logp_bt: jax.Array,
                     mask_bt: jax.Array, kl_coef: float) -> jax.Array:
    """(B, T) per-token rewards of the reference's `reward` KL mode.

    Like the reference's rollout: the scalar reward sits on the last valid token and every
    valid token gets −kl_coef·(logπ_old − logπ_ref) (the rollout policy's log-probs, no
    gradient). Its sum over tokens is `fold_kl_into_rewards`.
    """
    m = mask_bt.astype(jnp.float32)
    kl = jax.lax.stop_gradient(logp_bt - ref_logp_bt)
    t = m.shape[1]
    last_t = t - 1 - jnp.argmax(m[:, ::-1] > 0, axis=1)  # the last valid position
    last = (jnp.arange(t) == last_t[:, None]) & (m > 0)
    return jnp.where(last, rewards_b[:, None], 0.0) - kl_coef * kl * m


def fold_kl_into_rewards(rewards_b: jax.Array, logp_bt: jax.Array, ref_logp_bt: jax.Array,
                         mask_bt: jax.Array, kl_coef: float) -> jax.Array:
    """(B,) r − kl_coef·Σ_t mask·(logπ_old − logπ_ref): the reference's `reward` KL mode.

    The reference sums its per-token rewards (`kl_token_rewards`) over the sequence, then
    normalises that per group (`group_advantages`) and gives every token of the sequence
    the same advantage (no discounting, no value function). Call this before
    `group_advantages`; the loss then adds no KL term.

    Consequence, kept on purpose because it is the reference's method: the KL penalty is
    divided by the group's reward std like the task reward, so its effective strength
    grows as a group's rewards agree (small std) and shrinks where they differ. verl's
    GRPO with `use_kl_in_reward` does the same (its outcome advantage sums the token-level
    rewards, KL included, before group normalisation); TRL's GRPOTrainer instead adds
    β·KL to the loss per token, unnormalised — that is `grpo.kl_mode=loss` here (k3
    estimator, `grpo.kl_beta`), the form to choose when the penalty should not depend on
    the reward spread.
    """
    m = mask_bt.astype(jnp.float32)
    kl = jax.lax.stop_gradient(logp_bt - ref_logp_bt)
    return rewards_b - kl_coef * jnp.sum(kl * m, axis=1)
