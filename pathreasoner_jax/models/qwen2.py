"""Qwen2 / Qwen2.5 decoder (RMSNorm, RoPE, GQA with q/k/v biases, SwiGLU) with a KV cache.

Padding: every token has a validity flag and an explicit RoPE position, so left- and
right-padded batches work the same way. The KV cache has S slots written in order from a
scalar index; `kv_valid_bs` marks which slots hold real tokens, and attention is causal
by slot. Positions come from the caller (`positions_from_valid`), never from pad ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.models.attention import attention
from pathreasoner_jax.models.layers import Ctx, Linear, RMSNorm
from pathreasoner_jax.sharding import constrain, context_size


@dataclass(frozen=True)
class Qwen2Dims:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    attention_impl: str = "auto"
    remat: bool = False
    mrope_section: tuple[int, ...] = ()  # Qwen2.5-VL's M-RoPE: frequencies per (t, h, w) axis
    attention_block: int = 0  # query block of causal self-attention (models/attention.py); 0: one block

    @staticmethod
    def from_config(llm, lora=None, attention_impl="auto", remat=False, attention_block=0) -> "Qwen2Dims":
        on = lora is not None and lora.enabled
        return Qwen2Dims(
            vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
            num_layers=llm.num_layers, num_heads=llm.num_heads, num_kv_heads=llm.num_kv_heads,
            head_dim=llm.head_dim or llm.hidden_size // llm.num_heads, rope_theta=llm.rope_theta,
            rms_norm_eps=llm.rms_norm_eps, tie_word_embeddings=llm.tie_word_embeddings,
            lora_rank=lora.rank if on else 0, lora_alpha=lora.alpha if on else 0.0,
            lora_dropout=lora.dropout if on else 0.0, lora_targets=tuple(lora.targets) if on else (),
            attention_impl=attention_impl, remat=remat, attention_block=attention_block)


def positions_from_valid(valid_bt: jax.Array, offset_b: Optional[jax.Array] = None) -> jax.Array:
    """RoPE positions: the count of valid tokens before each token (pads repeat a position)."""
    pos = jnp.cumsum(valid_bt.astype(jnp.int32), axis=1) - 1
    pos = jnp.maximum(pos, 0)
    return pos if offset_b is None else pos + offset_b[:, None]


def rope(x_btnh: jax.Array, positions_bt: jax.Array, theta: float, mrope_section: tuple[int, ...] = ()) -> jax.Array:
    """HF-style rotary embedding (rotate_half over the two halves of head_dim), in fp32.

    positions (B,T), or (B,T,3) temporal/height/width ids for M-RoPE: frequency block i
    of `mrope_section` rotates by axis i mod 3 (HF's `recomposition_frequencies`). A text
    token has three equal ids, so (B,T) positions give the same angles under M-RoPE.
    """
    h = x_btnh.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    if positions_bt.ndim == 3:
        axis_of_freq = np.concatenate([np.full(n, i % 3) for i, n in enumerate(mrope_section)])
        ang = positions_bt.astype(jnp.float32)[..., axis_of_freq] * inv_freq  # (B,T,H/2)
    else:
        ang = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # (B,T,H/2)
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
    x = x_btnh.astype(jnp.float32)
    x1, x2 = x[..., : h // 2], x[..., h // 2:]
    rotated = jnp.concatenate([-x2, x1], -1)
    return (x * cos + rotated * sin).astype(x_btnh.dtype)


class Attention(nnx.Module):
    def __init__(self, d: Qwen2Dims, rngs: nnx.Rngs, param_dtype):
        self.d = d
        nh, nk, hd, dm = d.num_heads, d.num_kv_heads, d.head_dim, d.hidden_size

        def lin(name, i, o, axes, bias):
            r = d.lora_rank if name in d.lora_targets else 0
            return Linear(i, o, axes=axes, rngs=rngs, bias=bias, lora_rank=r, lora_alpha=d.lora_alpha,
                          lora_dropout=d.lora_dropout, param_dtype=param_dtype)
        self.q_proj = lin("q_proj", dm, nh * hd, ("embed", "q_heads"), True)
        self.k_proj = lin("k_proj", dm, nk * hd, ("embed", "kv_heads"), True)
        self.v_proj = lin("v_proj", dm, nk * hd, ("embed", "kv_heads"), True)
        self.o_proj = lin("o_proj", nh * hd, dm, ("q_heads", "embed"), False)

    def __call__(self, x_btd, positions_bt, mask_b1ts, ctx: Ctx, cache: Optional[dict], index,
                 prefix: Optional[dict] = None, causal_from_zero: bool = False):
        d = self.d
        b, t, _ = x_btd.shape
        q = self.q_proj(x_btd, ctx).reshape(b, t, d.num_heads, d.head_dim)
        k = self.k_proj(x_btd, ctx).reshape(b, t, d.num_kv_heads, d.head_dim)
        v = self.v_proj(x_btd, ctx).reshape(b, t, d.num_kv_heads, d.head_dim)
        q = constrain(rope(q, positions_bt, d.rope_theta, d.mrope_section), ("batch", "length", "act_heads", None))
        k = rope(k, positions_bt, d.rope_theta, d.mrope_section)
        new_cache = None
        if cache is not None:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=1)
            if context_size() > 1:  # the cache stays split along the sequence
                k_all, v_all = (constrain(a, ("batch", "length", "act_kv_heads", None)) for a in (k_all, v_all))
            new_cache = {"k": k_all, "v": v_all}
            k, v = k_all.astype(q.dtype), v_all.astype(q.dtype)
        if context_size() > 1 and t > 1:
            # context parallelism: every device keeps its queries and gathers all keys and
            # values. An all-gather rather than a ring: with GQA K and V are small (7B: 4 KV
            # heads × 128 = 1024 values a token for K and V together against 3584 for the
            # hidden state), the bytes moved equal a ring's, and XLA overlaps one gather
            # with the layer's matmuls without a hand-written C-step loop. (Causal balance
            # needs nothing: every device multiplies its query block by all keys.)
            k, v = (constrain(a, ("batch", "kv_length", "act_kv_heads", None)) for a in (k, v))
        if prefix is None:
            # query blocks need slot i to be token i (no cache, or a cache filled from slot 0)
            block = d.attention_block if causal_from_zero and context_size() == 1 else 0
            out = attention(q, k, v, mask_b1ts, impl=d.attention_impl, causal_block=block)
        else:
            out = shared_prefix_attention(q, prefix["k"].astype(q.dtype), prefix["v"].astype(q.dtype),
                                          prefix["valid"], k, v, mask_b1ts[:, 0])
        return self.o_proj(out.reshape(b, t, d.num_heads * d.head_dim), ctx), new_cache


class MLP(nnx.Module):
    def __init__(self, d: Qwen2Dims, rngs: nnx.Rngs, param_dtype):
        def lin(name, i, o, axes):
            r = d.lora_rank if name in d.lora_targets else 0
            return Linear(i, o, axes=axes, rngs=rngs, bias=False, lora_rank=r, lora_alpha=d.lora_alpha,
                          lora_dropout=d.lora_dropout, param_dtype=param_dtype)
        self.gate_proj = lin("gate_proj", d.hidden_size, d.intermediate_size, ("embed", "mlp"))
        self.up_proj = lin("up_proj", d.hidden_size, d.intermediate_size, ("embed", "mlp"))
        self.down_proj = lin("down_proj", d.intermediate_size, d.hidden_size, ("mlp", "embed"))

    def __call__(self, x, ctx: Ctx):
        h = jax.nn.silu(self.gate_proj(x, ctx)) * self.up_proj(x, ctx)
        return self.down_proj(constrain(h, ("batch", "length", "act_mlp")), ctx)


class DecoderLayer(nnx.Module):
    def __init__(self, d: Qwen2Dims, rngs: nnx.Rngs, param_dtype):
        self.input_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps, param_dtype)
        self.self_attn = Attention(d, rngs, param_dtype)
        self.post_attention_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps, param_dtype)
        self.mlp = MLP(d, rngs, param_dtype)

    def __call__(self, x, positions_bt, mask_b1ts, ctx: Ctx, cache, index, prefix=None, causal_from_zero=False):
        h, new_cache = self.self_attn(self.input_layernorm(x), positions_bt, mask_b1ts, ctx, cache, index, prefix,
                                      causal_from_zero)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x), ctx)
        return constrain(x, ("batch", "length", "act_embed")), new_cache


def shared_prefix_attention(q_btnh, pk_psk, pv_psk, pvalid_ps, k_bskh, v_bskh, mask_bts):
    """Attention over [group prefix ; own cache] with one softmax across both.

    q (B,T,N,H) with B = P·G rows (G consecutive rows share prefix p); prefix k/v
    (P,S,K,H) with validity (P,S); own k/v (B,S2,K,H) with mask (B,T,S2). fp32 softmax.
    """
    b, t, n, h = q_btnh.shape
    p, s, kh, _ = pk_psk.shape
    g, r = b // p, n // kh
    q = q_btnh.astype(jnp.float32).reshape(b, t, kh, r, h) * h ** -0.5
    s_own = jnp.einsum("bqkrh,bskh->bkrqs", q, k_bskh.astype(jnp.float32))
    s_own = jnp.where(mask_bts[:, None, None], s_own, -jnp.inf)
    qp = q.reshape(p, g, t, kh, r, h)
    s_pre = jnp.einsum("pgqkrh,pskh->pgkrqs", qp, pk_psk.astype(jnp.float32))
    s_pre = jnp.where(pvalid_ps[:, None, None, None, None, :], s_pre, -jnp.inf).reshape(b, kh, r, t, s)
    probs = jax.nn.softmax(jnp.concatenate([s_pre, s_own], -1), axis=-1)
    p_pre, p_own = probs[..., :s], probs[..., s:]
    o = jnp.einsum("bkrqs,bskh->bqkrh", p_own, v_bskh.astype(jnp.float32))
    o = o + jnp.einsum("pgkrqs,pskh->pgqkrh", p_pre.reshape(p, g, kh, r, t, s),
                       pv_psk.astype(jnp.float32)).reshape(b, t, kh, r, h)
    return o.reshape(b, t, n, h).astype(q_btnh.dtype)


def init_cache(d: Qwen2Dims, batch: int, slots: int, dtype=jnp.bfloat16) -> dict:
    """Preallocated KV cache: per layer k/v (B, S, K, H), slot validity (B, S), write index."""
    shape = (batch, slots, d.num_kv_heads, d.head_dim)
    return {"k": [jnp.zeros(shape, dtype) for _ in range(d.num_layers)],
            "v": [jnp.zeros(shape, dtype) for _ in range(d.num_layers)],
            "kv_valid": jnp.zeros((batch, slots), bool), "index": jnp.zeros((), jnp.int32)}


class Qwen2(nnx.Module):
    """Decoder-only LM. `__call__` maps input embeddings to final hidden states."""

    def __init__(self, d: Qwen2Dims, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.d = d
        self.embed_tokens = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d.vocab_size, d.hidden_size),
                                                               param_dtype), logical_axes=("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(d, rngs, param_dtype) for _ in range(d.num_layers)])
        self.norm = RMSNorm(d.hidden_size, d.rms_norm_eps, param_dtype)
        self.lm_head = None if d.tie_word_embeddings else nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (d.hidden_size, d.vocab_size), param_dtype),
            logical_axes=("embed", "vocab"))

    def embed(self, ids_bt: jax.Array, ctx: Ctx) -> jax.Array:
        return jnp.take(self.embed_tokens[...], ids_bt, axis=0).astype(ctx.dtype)

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        """fp32 logits (SPEC §3: logits and log-softmax in fp32)."""
        w = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
        out = jnp.dot(hidden_btd.astype(jnp.float32), w.astype(jnp.float32))
        return constrain(out, ("batch", "act_vocab") if out.ndim == 2 else ("batch", "length", "act_vocab"))

    def __call__(self, x_btd, positions_bt, valid_bt, ctx: Ctx, cache: Optional[dict] = None,
                 prefix: Optional[dict] = None, fresh_cache: bool = False):
        """Returns (final hidden (B,T,D), updated cache or None).

        Without a cache: causal attention over the T tokens, keys masked by `valid_bt`.
        With a cache: the T tokens are written at slots [index, index+T) and attend to
        every valid slot at or before their own.
        With a shared `prefix` ({"k","v": per layer (B', S, K, H), "valid": (B', S)}, the
        batch being B' groups of G rows): each row also attends to its group's prefix,
        which is stored once, not G times.
        `fresh_cache`: the cache is empty (index 0), so slot i is token i and causal
        attention may run in query blocks (`attention_block`), as without a cache.
        """
        b, t, _ = x_btd.shape
        x = constrain(x_btd.astype(ctx.dtype), ("batch", "length", "act_embed"))
        if cache is None:
            q_slot, k_slot = jnp.arange(t), jnp.arange(t)
            kv_valid, index = valid_bt, 0
        else:
            index = cache["index"]
            q_slot = index + jnp.arange(t)
            k_slot = jnp.arange(cache["kv_valid"].shape[1])
            kv_valid = jax.lax.dynamic_update_slice_in_dim(cache["kv_valid"], valid_bt, index, axis=1)
        causal = k_slot[None, :] <= q_slot[:, None]
        # A pad query attends to itself so that no softmax row is empty (its output is unused).
        self_slot = k_slot[None, :] == q_slot[:, None]
        mask = (causal[None] & kv_valid[:, None, :]) | self_slot[None]
        mask = mask[:, None]  # (B,1,T,S)
        # remat also with a cache (GRPO's shared-prefix passes train through it), not for
        # one-token decode steps, which are never differentiated
        layer_fn = _remat_layer if self.d.remat and t > 1 else _call_layer
        from_zero = cache is None or fresh_cache
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else {"k": cache["k"][i], "v": cache["v"][i]}
            layer_prefix = None if prefix is None else {
                "k": prefix["k"][i], "v": prefix["v"][i], "valid": prefix["valid"]}
            x, c = layer_fn(layer, x, positions_bt, mask, ctx, layer_cache, index, layer_prefix, from_zero)
            if c is not None:
                new_k.append(c["k"])
                new_v.append(c["v"])
        x = self.norm(x)
        if cache is None:
            return x, None
        return x, {"k": new_k, "v": new_v, "kv_valid": kv_valid,
                   "index": cache["index"] + t}


def _call_layer(layer, x, positions, mask, ctx, cache, index, prefix=None, from_zero=False):
    return layer(x, positions, mask, ctx, cache, index, prefix, from_zero)


def _remat_layer(layer, x, positions, mask, ctx, cache, index, prefix=None, from_zero=False):
    # jax.checkpoint over the layer's explicit state, not nnx.remat: nnx.remat writes the
    # layer's variables back after the call, which fails for the frozen base weights of a
    # LoRA-only step (created outside the gradient trace: "Cannot mutate Param from a
    # different trace level"); a decoder layer's forward mutates no state.
    graphdef, state = nnx.split(layer)

    @jax.checkpoint
    def f(state, x, positions, mask, cache, index, prefix):
        return nnx.merge(graphdef, state)(x, positions, mask, ctx, cache, index, prefix, from_zero)
    return f(state, x, positions, mask, cache, index, prefix)
