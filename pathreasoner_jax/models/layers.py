"""Building blocks: linear layers with optional LoRA, RMSNorm, LayerNorm, dropout.

Every parameter carries `logical_axes` metadata (one name per dimension); the sharding
rules in `pathreasoner_jax.sharding` map those names to mesh axes.

Randomness is explicit: a forward pass receives a `Ctx` with a dropout key (or None for
deterministic), and each layer folds in its own fixed `uid`. The same key therefore gives
the same dropout masks in two passes — GRPO relies on that so that the old log-probs and
the first update see identical masks (reference defect 6).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, replace
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

_uids = itertools.count()
_uid_depth = 0


@contextlib.contextmanager
def uid_scope():
    """Layer uids counted from 0 while one whole model is built (nested scopes share the
    outer count), so two models built alike draw the same dropout masks from one key; a
    process-global count gave a second model in the same process different masks."""
    global _uids, _uid_depth
    saved = _uids
    if _uid_depth == 0:
        _uids = itertools.count()
    _uid_depth += 1
    try:
        yield
    finally:
        _uid_depth -= 1
        if _uid_depth == 0:
            _uids = saved


class LoRAParam(nnx.Param):
    """LoRA adapter weights; a distinct type so optimisers and filters can select them."""


@dataclass(frozen=True)
class Ctx:
    """Per-call settings threaded through the model (static except `rng`)."""
    rng: Optional[jax.Array] = None  # dropout key; None : deterministic
    use_lora: bool = True  # False : the frozen base model (GRPO reference policy)
    dtype: jnp.dtype = jnp.float32  # compute dtype

    @property
    def deterministic(self) -> bool:
        return self.rng is None

    def with_rng(self, rng):
        return replace(self, rng=rng)


def dropout(x: jax.Array, rate: float, ctx: Ctx, uid: int, salt: int = 0) -> jax.Array:
    if ctx.deterministic or rate <= 0.0:
        return x
    key = jax.random.fold_in(jax.random.fold_in(ctx.rng, uid), salt)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _normal(rngs: nnx.Rngs, shape, std, dtype):
    return std * jax.random.normal(rngs.params(), shape, dtype)


class Linear(nnx.Module):
    """y = x @ kernel + bias (+ LoRA: scale · dropout(x) @ A @ B). kernel is (in, out)."""

    def __init__(self, d_in: int, d_out: int, *, axes: tuple, rngs: nnx.Rngs, bias: bool = True,
                 lora_rank: int = 0, lora_alpha: float = 0.0, lora_dropout: float = 0.0,
                 init_std: float | None = None, param_dtype=jnp.float32):
        std = init_std if init_std is not None else 1.0 / math.sqrt(d_in)
        self.kernel = nnx.Param(_normal(rngs, (d_in, d_out), std, param_dtype), logical_axes=axes)
        self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype), logical_axes=(axes[1],)) if bias else None
        self.lora_rank = lora_rank
        if lora_rank > 0:
            self.lora_a = LoRAParam(_normal(rngs, (d_in, lora_rank), 1.0 / math.sqrt(d_in), param_dtype),
                                    logical_axes=(axes[0], "lora_rank"))
            self.lora_b = LoRAParam(jnp.zeros((lora_rank, d_out), param_dtype),
                                    logical_axes=("lora_rank", axes[1]))
            self.lora_scale = lora_alpha / lora_rank
            self.lora_dropout = lora_dropout
        self.uid = next(_uids)

    def __call__(self, x: jax.Array, ctx: Ctx) -> jax.Array:
        dt = ctx.dtype
        lead = x.shape[:-1]
        # Rows flattened to (N, in): the kernel's gradient is then a dot over one contracting
        # dim. Over (B, T, in) XLA:CPU writes the activation gradient transposed inside its
        # elementwise fusion first (~5 ns per element; an MLP's fwd+bwd 31 → 22 ms).
        x = x.reshape(-1, x.shape[-1]).astype(dt)
        y = jnp.dot(x, self.kernel[...].astype(dt))
        if self.bias is not None:
            y = y + self.bias[...].astype(dt)
        if self.lora_rank > 0 and ctx.use_lora:
            h = dropout(x, self.lora_dropout, ctx, self.uid)
            h = jnp.dot(jnp.dot(h, self.lora_a[...].astype(dt)), self.lora_b[...].astype(dt))
            y = y + self.lora_scale * h
        return y.reshape(lead + (y.shape[-1],))

    def merge_lora(self) -> None:
        """Folds the adapter into the kernel (for export) and zeroes the adapter."""
        if self.lora_rank > 0:
            delta = self.lora_scale * (self.lora_a[...] @ self.lora_b[...])
            self.kernel[...] = self.kernel[...] + delta.astype(self.kernel[...].dtype)
            self.lora_b[...] = jnp.zeros_like(self.lora_b[...])


class RMSNorm(nnx.Module):
    """Qwen2 RMSNorm: normalise in fp32, scale, cast back to the input dtype (as HF)."""

    def __init__(self, dim: int, eps: float, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float = 1e-5, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, -1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)
