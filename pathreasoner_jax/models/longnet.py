"""LongNet slide encoder with dilated attention, exactly as SPEC §3.

Per branch (segment w, dilation r): the effective segment is min(w, N); the sequence is
padded to whole segments, and each segment inside to a multiple of r with masked
positions (so a segment that r does not divide keeps exactly its own positions). Heads are split into groups of
ceil(H / r) heads; group j keeps positions j, j+r, j+2r, ... of every segment (as
torchscale's `dense_to_sparse`, which pads the heads to a multiple of r and drops the
padding, so with r > H the offsets ≥ H are kept by no head). Within the kept positions
attention is ordinary non-causal softmax attention with padded keys masked. Branch
outputs merge per position and head with weights softmax_b(stop_gradient(lse_b)); a
branch that did not cover a position has weight 0. Pre-norm layers with sub-LN, GELU
FFN, final LayerNorm, no positional encoding, dropout and drop-path.

On a mesh with `context` > 1 the patch sequence is split over that axis (padded to whole
shards) and the attention runs per device (`longnet_context.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.models.dilated import dilated_attention
from pathreasoner_jax.models.layers import Ctx, LayerNorm, Linear, dropout
from pathreasoner_jax.sharding import constrain, context_size, current_mesh, logical_to_spec


def drop_path(x_bnd, rate: float, ctx: Ctx, uid: int):
    """Stochastic depth: drops the whole residual branch per sample."""
    if ctx.deterministic or rate <= 0.0:
        return x_bnd
    key = jax.random.fold_in(jax.random.fold_in(ctx.rng, uid), 7)
    keep = jax.random.bernoulli(key, 1.0 - rate, (x_bnd.shape[0], 1, 1))
    return jnp.where(keep, x_bnd / (1.0 - rate), 0.0)


class DilatedSelfAttention(nnx.Module):
    def __init__(self, width, heads, segments, dilations, dropout_rate, eps, rngs, param_dtype):
        ax = ("slide_embed", "slide_mlp")
        self.q_proj, self.k_proj, self.v_proj = (
            Linear(width, width, axes=ax, rngs=rngs, param_dtype=param_dtype) for _ in range(3))
        self.inner_ln = LayerNorm(width, eps, param_dtype)  # sub-LN
        self.out_proj = Linear(width, width, axes=("slide_mlp", "slide_embed"), rngs=rngs, param_dtype=param_dtype)
        self.heads, self.segments, self.dilations = heads, tuple(segments), tuple(dilations)
        self.dropout_rate = dropout_rate

    def __call__(self, x_bnd, valid_bn, ctx: Ctx):
        b, n, w = x_bnd.shape
        dh = w // self.heads
        q = self.q_proj(x_bnd, ctx).reshape(b, n, self.heads, dh) * dh ** -0.5
        k = self.k_proj(x_bnd, ctx).reshape(b, n, self.heads, dh)
        v = self.v_proj(x_bnd, ctx).reshape(b, n, self.heads, dh)
        mesh = current_mesh()
        if context_size(mesh) > 1:
            from pathreasoner_jax.models.longnet_context import context_dilated_attention
            batch_axes = logical_to_spec(("batch",), (b,), mesh)[0]
            out = context_dilated_attention(q, k, v, valid_bn, self.segments, self.dilations, mesh, batch_axes)
        else:
            out = dilated_attention(q, k, v, valid_bn, self.segments, self.dilations)
        out = out.astype(x_bnd.dtype)
        return self.out_proj(self.inner_ln(out.reshape(b, n, w)), ctx)


class LongNetLayer(nnx.Module):
    def __init__(self, cfg, drop_path_rate, rngs, param_dtype):
        w, f, eps = cfg.width, cfg.ffn_dim, cfg.layer_norm_eps
        self.attn_ln = LayerNorm(w, eps, param_dtype)
        self.attn = DilatedSelfAttention(w, cfg.num_heads, cfg.segment_lengths, cfg.dilations, cfg.dropout,
                                         eps, rngs, param_dtype)
        self.ffn_ln = LayerNorm(w, eps, param_dtype)
        self.fc1 = Linear(w, f, axes=("slide_embed", "slide_mlp"), rngs=rngs, param_dtype=param_dtype)
        self.ffn_inner_ln = LayerNorm(f, eps, param_dtype)  # sub-LN
        self.fc2 = Linear(f, w, axes=("slide_mlp", "slide_embed"), rngs=rngs, param_dtype=param_dtype)
        self.dropout_rate, self.drop_path_rate = cfg.dropout, drop_path_rate
        self.uid = self.fc1.uid

    def __call__(self, x, valid_bn, ctx: Ctx):
        p = self.dropout_rate
        h = dropout(self.attn(self.attn_ln(x), valid_bn, ctx), p, ctx, self.uid, 1)
        x = x + drop_path(h, self.drop_path_rate, ctx, self.uid + 1)
        h = dropout(jax.nn.gelu(self.fc1(self.ffn_ln(x), ctx), approximate=False), p, ctx, self.uid, 2)
        h = dropout(self.fc2(self.ffn_inner_ln(h), ctx), p, ctx, self.uid, 3)
        return x + drop_path(h, self.drop_path_rate, ctx, self.uid + 2)


class LongNet(nnx.Module):
    """(B, N, feature_dim) patch features + validity (B, N) → (B, N, width)."""

    def __init__(self, cfg, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.in_proj = None if cfg.feature_dim == cfg.width else Linear(
            cfg.feature_dim, cfg.width, axes=("slide_embed", "slide_mlp"), rngs=rngs, param_dtype=param_dtype)
        rates = [cfg.drop_path * i / max(cfg.num_layers - 1, 1) for i in range(cfg.num_layers)]
        self.layers = nnx.List([LongNetLayer(cfg, r, rngs, param_dtype) for r in rates])
        self.final_ln = LayerNorm(cfg.width, cfg.layer_norm_eps, param_dtype)

    def __call__(self, features_bnf, valid_bn, ctx: Ctx):
        n = features_bnf.shape[1]
        c = context_size()
        if c > 1:  # whole shards of a length every branch can use (longnet_context.local_length)
            from pathreasoner_jax.models.longnet_context import local_length
            attn = self.layers[0].attn
            pad = c * local_length(n, c, attn.segments, attn.dilations) - n
            features_bnf = jnp.pad(features_bnf, [(0, 0), (0, pad), (0, 0)])
            valid_bn = jnp.pad(valid_bn, [(0, 0), (0, pad)])
        x = features_bnf.astype(ctx.dtype)
        if self.in_proj is not None:
            x = self.in_proj(x, ctx)
        for layer in self.layers:
            if c > 1:
                x = constrain(x, ("batch", "patches", None))
            x = layer(x, valid_bn, ctx)
        x = self.final_ln(x)
        return jnp.where(valid_bn[..., None], x, 0)[:, :n]
