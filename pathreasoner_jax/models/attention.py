"""Attention through `jax.nn.dot_product_attention`.

`impl="auto"` asks for cuDNN flash attention on GPU when the inputs allow it (bf16/fp16)
and uses XLA otherwise; on TPU XLA's fused attention is used (a splash kernel can be
registered here later). Softmax runs in fp32 inside the XLA implementation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _pick(impl: str, dtype) -> str | None:
    if impl in ("xla", "cudnn"):
        return impl
    if jax.default_backend() == "gpu" and dtype in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def attention(q_btnh, k_bsnh, v_bsnh, mask_b1ts, impl: str = "auto"):
    """q (B,T,N,H), k/v (B,S,K,H) with K dividing N (GQA), boolean mask (B,1,T,S)."""
    chosen = _pick(impl, q_btnh.dtype)
    try:
        return jax.nn.dot_product_attention(q_btnh, k_bsnh, v_bsnh, mask=mask_b1ts, implementation=chosen)
    except (NotImplementedError, ValueError, RuntimeError):
        if chosen == "xla":
            raise
        # cuDNN rejects some mask/shape combinations; XLA handles all of them.
        return jax.nn.dot_product_attention(q_btnh, k_bsnh, v_bsnh, mask=mask_b1ts, implementation="xla")
