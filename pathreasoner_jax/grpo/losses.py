"""GRPO / DAPO / Dr.GRPO policy losses (SPEC §6) and DAPO's length handling.

Every loss returns (loss_sum, denominator, metrics): the trainer adds the sums and the
denominators over micro-batches (and devices) and divides once, so gradient accumulation
gives exactly the full-batch loss for every aggregation mode (as Tunix does).
Shapes: B completions, T completion positions; masks are 1 on completion tokens
(up to and including the first EOS) and 0 elsewhere.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

K3_MAX = 10.0       # clip of the k3 value, as verl's low_var_kl
K3_LOG_RATIO_MAX = 20.0  # log ref/π above this is clamped first, so exp never overflows


def token_logprobs(logits_btv: jax.Array, ids_bt: jax.Array) -> jax.Array:
    """(B, T) log π(ids | ·) in float32 from logits aligned with ids (logits[t] predicts ids[t])."""
    logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, ids_bt[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_entropy(logits_btv: jax.Array) -> jax.Array:
    """(B, T) entropy of the next-token distribution, float32."""
    logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def kl_k3(logp_bt: jax.Array, ref_logp_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """(B, T) k3 = exp(d) − d − 1, d = logπ_ref − logπ, 0 where mask is 0.

    Small |d| (the common case) uses the Taylor series d²/2 + d³/6 + d⁴/24, free of the
    cancellation in exp(d) − d − 1 (float32 rounds that to 0 or noise below |d| ≈ 1e-3); masked
    positions are zeroed before exp so garbage there cannot make inf/NaN (also in the
    gradient); d ≤ K3_LOG_RATIO_MAX and k3 ≤ K3_MAX bound the rare huge values.
    """
    m = mask_bt.astype(bool)
    d = jnp.where(m, ref_logp_bt - logp_bt, 0.0)
    d = jnp.minimum(d, K3_LOG_RATIO_MAX)
    series = d * d * (0.5 + d * (1.0 / 6.0 + d / 24.0))  # |d| < 1e-2: error < d⁵/120
    k3 = jnp.where(jnp.abs(d) < 1e-2, series, jnp.expm1(d) - d)
    return jnp.where(m, jnp.minimum(k3, K3_MAX), 0.0)


# ---------------------------------------------------------------- aggregation modes
def _seq_mean_token_mean(loss_bt, m_bt, max_len):
    n_b = m_bt.sum(1)
    per_seq = jnp.sum(loss_bt * m_bt, axis=1) / jnp.maximum(n_b, 1.0)
    return per_seq.sum(), (n_b > 0).sum().astype(jnp.float32)  # empty rows (masked) don't count


def _token_mean(loss_bt, m_bt, max_len):
    return jnp.sum(loss_bt * m_bt), m_bt.sum()


def _seq_mean_token_sum_norm(loss_bt, m_bt, max_len):
    if not max_len:
        raise ValueError("seq-mean-token-sum-norm needs max_len (the generation budget)")
    return jnp.sum(loss_bt * m_bt) / float(max_len), jnp.float32(loss_bt.shape[0])


# name → (per-token loss (B,T), mask (B,T) float, max_len) → (sum, denominator)
AGGREGATIONS: dict[str, Callable] = {
    "seq-mean-token-mean": _seq_mean_token_mean,      # the reference (and GRPO paper)
    "token-mean": _token_mean,                        # DAPO
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,  # Dr.GRPO: Σ tokens / budget, mean over rows
}
KL_MODES = ("none", "reward", "loss")


def policy_loss(logp_bt: jax.Array, old_logp_bt: jax.Array, adv: jax.Array, mask_bt: jax.Array, *,
                clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, agg: str = "seq-mean-token-mean",
                max_len: Optional[int] = None, ref_logp_bt: Optional[jax.Array] = None,
                kl_mode: str = "none", kl_beta: float = 0.04,
                logits_btv: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array, dict]:
    """Clipped surrogate → (loss_sum, denominator, metrics); the loss is sum / denominator.

    logp_bt (B,T): current policy log-probs (differentiated); old_logp_bt (B,T): the
    rollout policy's, recomputed in the same mode as the update so the first ratio is 1;
    adv: (B,) per sequence or (B,T) per token; ratio = exp(logp − old), per token
    −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A). kl_mode `loss` adds kl_beta·k3 per token
    (ref_logp_bt needed); `reward` expects the KL folded into the rewards already
    (advantages.fold_kl_into_rewards) and adds nothing; either reports the k3 mean when
    ref_logp_bt is given. max_len: the generation budget (Dr.GRPO's constant).
    metrics (token means over this micro-batch, weight them by `n_tokens`): clip_ratio_low
    (r < 1−ε_low with A < 0), clip_ratio_high (r > 1+ε_high with A > 0), clip_ratio,
    ratio_mean, kl, entropy (when logits_btv is given).
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {agg!r}; known: {sorted(AGGREGATIONS)}")
    if kl_mode not in KL_MODES:
        raise ValueError(f"unknown kl_mode {kl_mode!r}; known: {KL_MODES}")
    if kl_mode == "loss" and ref_logp_bt is None:
        raise ValueError("kl_mode='loss' needs ref_logp_bt")
    m = mask_bt.astype(jnp.float32)
    valid = m > 0
    adv_bt = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, m.shape).astype(jnp.float32)
    # masked positions: log-ratio 0, so padding garbage cannot overflow exp
    ratio = jnp.exp(jnp.where(valid, logp_bt - old_logp_bt, 0.0))
    clipped = jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss_bt = jnp.maximum(-adv_bt * ratio, -adv_bt * clipped)
    metrics = {}
    if ref_logp_bt is not None:
        k3 = kl_k3(logp_bt, ref_logp_bt, m)
        if kl_mode == "loss":
            loss_bt = loss_bt + kl_beta * k3
        metrics["kl"] = k3
    loss_sum, denom = AGGREGATIONS[agg](loss_bt, m, max_len)

    n = jnp.maximum(m.sum(), 1.0)
    tmean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / n  # noqa: E731
    low = (ratio < 1.0 - clip_eps_low) & (adv_bt < 0)
    high = (ratio > 1.0 + clip_eps_high) & (adv_bt > 0)
    metrics.update(clip_ratio_low=low, clip_ratio_high=high, clip_ratio=low | high, ratio_mean=ratio)
    if logits_btv is not None:
        metrics["entropy"] = token_entropy(logits_btv)
    metrics = {k: jax.lax.stop_gradient(tmean(v.astype(jnp.float32))) for k, v in metrics.items()}
    metrics["n_tokens"] = m.sum()
    return loss_sum, denom, metrics


# ---------------------------------------------------------------- DAPO length handling
def completion_lengths(mask_bt: jax.Array) -> jax.Array:
    """(B,) int32 number of completion tokens (the first EOS included)."""
    return mask_bt.astype(jnp.int32).sum(1)


def overlong_penalty(lengths_b: jax.Array, max_len: int, buffer: int, penalty: float = 1.0) -> jax.Array:
    """(B,) DAPO's soft overlong punishment, added to the reward: 0 up to max_len − buffer
    tokens, then falling linearly to −penalty at max_len (verl's overlong_buffer)."""
    if buffer <= 0:
        return jnp.zeros(lengths_b.shape, jnp.float32)
    exceed = lengths_b.astype(jnp.float32) - float(max_len - buffer)
    return -penalty * jnp.clip(exceed / float(buffer), 0.0, 1.0)


def is_truncated(ids_bt: jax.Array, mask_bt: jax.Array, eos_id: int) -> jax.Array:
    """(B,) bool: the completion has no EOS among its valid tokens (it hit the budget)."""
    return ~jnp.any(mask_bt.astype(bool) & (ids_bt == eos_id), axis=1)


def mask_truncated(mask_bt: jax.Array, truncated_b: jax.Array) -> jax.Array:
    """DAPO's overlong filtering: truncated completions get loss mask 0."""
    return jnp.where(truncated_b[:, None], jnp.zeros_like(mask_bt), mask_bt)
