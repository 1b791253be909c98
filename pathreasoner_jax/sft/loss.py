"""SFT loss as (sum, denominator), so micro-batch accumulation stays exact."""
from __future__ import annotations

import jax.numpy as jnp

from pathreasoner_jax.models.vlm import token_logprobs


def sft_loss(model, batch: dict, ctx, logits_chunk: int = 0):
    """Weighted next-token NLL over a batch.

    batch: `ids` (B,T) int32, `text_valid` (B,T) bool, `targets` (B,T) int32 (the token
    each position predicts), `loss_weight` (B,T) float32 (0 off the assistant tokens and
    on masked steps), `features` (B,P,F), `patch_valid` (B,P). Returns (Σ w·nll, Σ w).
    """
    hidden, valid = model(batch["ids"], batch["text_valid"], batch.get("features"), batch.get("patch_valid"), ctx)
    logp = token_logprobs(model.llm, hidden, batch["targets"], logits_chunk or getattr(model, "logits_chunk", 0))
    w = batch["loss_weight"] * valid
    return -jnp.sum(logp * w), jnp.sum(w)
