"""Qwen2.5-VL's vision tower in Flax NNX: 14-px patches (temporal patch 2) → pre-norm ViT
blocks (RMSNorm, 2-D rotary embedding, SwiGLU with biases) with window attention except
in the full-attention layers the config names → the 2×2 patch merger into the LLM width.

Shapes are static: a batch row holds up to P patches of any number of images, with the
per-patch metadata of `vl/preprocess.pack_images` (row/col, image segment, window id).
Windows and images are attention masks over the row's patches rather than HF's
window-order permutation with variable-length segments: attention within a segment does
not depend on the order of its tokens, and merge groups (4 consecutive patches) never
straddle windows, so the outputs are the same as HF's, in HF's patch order.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.models.attention import attention
from pathreasoner_jax.models.layers import Ctx, Linear, RMSNorm
from pathreasoner_jax.sharding import constrain


@dataclass(frozen=True)
class VisionDims:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    fullatt_block_indexes: tuple[int, ...]
    patch_size: int = 14
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    window_size: int = 112
    rope_theta: float = 10000.0
    eps: float = 1e-6
    remat: bool = False

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def rope_2d(x_bpnh: jax.Array, hw_bp2: jax.Array, theta: float) -> jax.Array:
    """HF's axial rope: angles [h·f, w·f, h·f, w·f] with f over head_dim/4 frequencies,
    rotate_half over the whole head, in fp32."""
    h = x_bpnh.shape[-1]
    spatial = h // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, spatial, 2, dtype=jnp.float32) / spatial))
    hw = hw_bp2.astype(jnp.float32)
    ang = jnp.concatenate([hw[..., 0:1] * inv_freq, hw[..., 1:2] * inv_freq], -1)  # (B,P,H/2)
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
    x = x_bpnh.astype(jnp.float32)
    rotated = jnp.concatenate([-x[..., h // 2:], x[..., : h // 2]], -1)
    return (x * cos + rotated * sin).astype(x_bpnh.dtype)


class VisionAttention(nnx.Module):
    def __init__(self, d: VisionDims, rngs: nnx.Rngs, param_dtype):
        self.d = d
        self.qkv = Linear(d.hidden_size, 3 * d.hidden_size, axes=("embed", "q_heads"), rngs=rngs,
                          param_dtype=param_dtype)
        self.proj = Linear(d.hidden_size, d.hidden_size, axes=("q_heads", "embed"), rngs=rngs,
                           param_dtype=param_dtype)

    def __call__(self, x_bpd, hw_bp2, mask_b1pp, ctx: Ctx):
        d = self.d
        b, p, _ = x_bpd.shape
        qkv = self.qkv(x_bpd, ctx).reshape(b, p, 3, d.num_heads, d.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = rope_2d(q, hw_bp2, d.rope_theta), rope_2d(k, hw_bp2, d.rope_theta)
        out = attention(q, k, v, mask_b1pp, impl="xla")
        return self.proj(out.reshape(b, p, d.hidden_size), ctx)


class VisionMLP(nnx.Module):
    def __init__(self, d: VisionDims, rngs: nnx.Rngs, param_dtype):
        def lin(i, o, axes):
            return Linear(i, o, axes=axes, rngs=rngs, param_dtype=param_dtype)
        self.gate_proj = lin(d.hidden_size, d.intermediate_size, ("embed", "mlp"))
        self.up_proj = lin(d.hidden_size, d.intermediate_size, ("embed", "mlp"))
        self.down_proj = lin(d.intermediate_size, d.hidden_size, ("mlp", "embed"))

    def __call__(self, x, ctx: Ctx):
        return self.down_proj(jax.nn.silu(self.gate_proj(x, ctx)) * self.up_proj(x, ctx), ctx)


class VisionBlock(nnx.Module):
    def __init__(self, d: VisionDims, rngs: nnx.Rngs, param_dtype):
        self.norm1 = RMSNorm(d.hidden_size, d.eps, param_dtype)
        self.attn = VisionAttention(d, rngs, param_dtype)
        self.norm2 = RMSNorm(d.hidden_size, d.eps, param_dtype)
        self.mlp = VisionMLP(d, rngs, param_dtype)

    def __call__(self, x, hw, mask, ctx: Ctx):
        x = x + self.attn(self.norm1(x), hw, mask, ctx)
        x = x + self.mlp(self.norm2(x), ctx)
        return constrain(x, ("batch", "length", "act_embed"))


class PatchMerger(nnx.Module):
    """RMSNorm, then each 2×2 group of consecutive patches → Linear(4C, 4C), GELU, Linear(4C, D)."""

    def __init__(self, d: VisionDims, rngs: nnx.Rngs, param_dtype):
        wide = d.hidden_size * d.spatial_merge_size ** 2
        self.ln_q = RMSNorm(d.hidden_size, d.eps, param_dtype)
        self.fc1 = Linear(wide, wide, axes=("embed", "mlp"), rngs=rngs, param_dtype=param_dtype)
        self.fc2 = Linear(wide, d.out_hidden_size, axes=("mlp", "embed"), rngs=rngs,
                          param_dtype=param_dtype)

    def __call__(self, x_bpc, ctx: Ctx):
        b, p, c = x_bpc.shape
        unit = self.fc1.kernel.shape[0] // c
        h = self.ln_q(x_bpc).reshape(b, p // unit, unit * c)
        return self.fc2(jax.nn.gelu(self.fc1(h, ctx), approximate=False), ctx)


class VisionTower(nnx.Module):
    def __init__(self, d: VisionDims, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.d = d
        # Conv3d with kernel = stride = (2, 14, 14) over one patch is a matmul over its flat pixels
        self.patch_embed = Linear(d.patch_dim, d.hidden_size, axes=("slide_embed", "embed"), rngs=rngs,
                                  bias=False, param_dtype=param_dtype)
        self.blocks = nnx.List([VisionBlock(d, rngs, param_dtype) for _ in range(d.depth)])
        self.merger = PatchMerger(d, rngs, param_dtype)

    def __call__(self, vision: dict, ctx: Ctx) -> jax.Array:
        """vision: "pixels" (B,P,patch_dim), "patch_hw" (B,P,2), "patch_seg" (B,P) (0: pad),
        "patch_window" (B,P) → merged tokens (B, P/4, out_hidden_size)."""
        seg, win = vision["patch_seg"], vision["patch_window"]
        p = seg.shape[1]
        self_slot = jnp.eye(p, dtype=bool)[None]  # a pad patch attends to itself: no empty softmax row
        real = (seg > 0)[:, :, None] & (seg > 0)[:, None, :]
        full = ((seg[:, :, None] == seg[:, None, :]) & real) | self_slot
        windowed = ((win[:, :, None] == win[:, None, :]) & real) | self_slot
        x = self.patch_embed(vision["pixels"].astype(ctx.dtype), ctx)
        hw = vision["patch_hw"]
        for i, blk in enumerate(self.blocks):
            mask = (full if i in self.d.fullatt_block_indexes else windowed)[:, None]
            x = _remat_block(blk, x, hw, mask, ctx) if self.d.remat else blk(x, hw, mask, ctx)
        return self.merger(x, ctx)


def _remat_block(blk, x, hw, mask, ctx):
    graphdef, state = nnx.split(blk)

    @jax.checkpoint
    def f(state, x, hw, mask):
        return nnx.merge(graphdef, state)(x, hw, mask, ctx)
    return f(state, x, hw, mask)
