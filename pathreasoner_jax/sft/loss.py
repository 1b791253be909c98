"""SFT loss as (sum, denominator), so micro-batch accumulation stays exact."""
from __future__ import annotations

import jax.numpy as jnp

from pathreasoner_jax.models.vlm import token_logprobs


def sft_loss(model, batch: dict, ctx, logits_chunk: int = 0):
    """Weighted next-token NLL over a batch.

    batch: `ids` (B,T) int32, `text_valid` (B,T) bool, `targets` (B,T) int32 (the token
    each position predicts), `loss_weight` (B,T) float32 (0 off the assistant tokens and
    on masked steps), `features` (B,P,F), `patch_valid` (B,P), and optionally `loss_pos` /
    `loss_pos_valid` (B,L) (`data/encode.loss_positions`). Returns (Σ w·nll, Σ w).
    """
    hidden, valid = model(batch["ids"], batch["text_valid"], batch.get("features"), batch.get("patch_valid"), ctx)
    w = batch["loss_weight"] * valid
    targets = batch["targets"]
    if "loss_pos" in batch:  # logits only where there is loss (`loss_positions`), not at every slide token
        pos = batch["loss_pos"]
        hidden = jnp.take_along_axis(hidden, pos[..., None], axis=1)
        targets = jnp.take_along_axis(targets, pos, axis=1)
        w = jnp.take_along_axis(w, pos, axis=1) * batch["loss_pos_valid"]
    logp = token_logprobs(model.llm, hidden, targets, logits_chunk or getattr(model, "logits_chunk", 0))
    return -jnp.sum(logp * w), jnp.sum(w)

