"""The slide VLM: LongNet over patch features → projector → tokens spliced into the LLM
input at the `<image>` placeholders (SlideChat-style, SPEC §3).

The text holds one `<image>` token per patch slot (the data pipeline expands the single
placeholder to P slots, P the batch's patch bucket). The k-th image token of a row takes
the k-th projected patch of that row; image tokens whose patch is padding are marked
invalid, so they are invisible to attention and carry no loss, and take no RoPE position.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.config import ModelConfig
from pathreasoner_jax.models.layers import Ctx, Linear, uid_scope
from pathreasoner_jax.models.longnet import LongNet
from pathreasoner_jax.models.qwen2 import Qwen2, Qwen2Dims, positions_from_valid

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Projector(nnx.Module):
    """Linear(width → H), GELU, Linear(H → H), with biases."""

    def __init__(self, d_in: int, d_out: int, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.fc1 = Linear(d_in, d_out, axes=("slide_embed", "embed"), rngs=rngs, param_dtype=param_dtype)
        self.fc2 = Linear(d_out, d_out, axes=("mlp", "embed"), rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, ctx: Ctx):
        return self.fc2(jax.nn.gelu(self.fc1(x, ctx), approximate=False), ctx)


class PathVLM(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, image_token_id: int):
        pd = DTYPES[cfg.param_dtype]
        self.dims = Qwen2Dims.from_config(cfg.llm, cfg.lora, cfg.attention_impl, cfg.remat, cfg.attention_block)
        with uid_scope():
            self.slide_encoder = LongNet(cfg.slide, rngs, pd)
            self.projector = Projector(cfg.slide.width, cfg.llm.hidden_size, rngs, pd)
            self.llm = Qwen2(self.dims, rngs, pd)
        self.image_token_id = image_token_id
        self.compute_dtype = DTYPES[cfg.compute_dtype]
        self.logits_chunk = cfg.logits_chunk

    def ctx(self, rng=None, use_lora: bool = True) -> Ctx:
        return Ctx(rng=rng, use_lora=use_lora, dtype=self.compute_dtype)

    def slide_tokens(self, features_bpf, patch_valid_bp, ctx: Ctx):
        """(B,P,F) features → (B,P,H) LLM-space tokens."""
        return self.projector(self.slide_encoder(features_bpf, patch_valid_bp, ctx), ctx)

    def embed_inputs(self, ids_bt, text_valid_bt, features_bpf, patch_valid_bp, ctx: Ctx, image_slots_bt=None):
        """Token embeddings with slide tokens spliced in; returns (x (B,T,H), valid (B,T)).

        `image_slots_bt` marks the placeholder positions; by default every image token id.
        (A sampled completion may contain that id; training passes the prompt's slots only.)
        """
        x = self.llm.embed(ids_bt, ctx)
        if features_bpf is None:
            return x, text_valid_bt
        is_image = (ids_bt == self.image_token_id) if image_slots_bt is None else image_slots_bt
        is_image = is_image & text_valid_bt  # padding never takes a patch, whatever id it holds
        slide = self.slide_tokens(features_bpf, patch_valid_bp, ctx).astype(x.dtype)
        rank = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, slide.shape[1] - 1)
        picked = jnp.take_along_axis(slide, rank[..., None], axis=1)
        patch_ok = jnp.take_along_axis(patch_valid_bp, rank, axis=1)
        x = jnp.where(is_image[..., None], picked, x)
        valid = text_valid_bt & (~is_image | patch_ok)
        return x, valid

    def inputs(self, ids_bt, text_valid_bt, features_bpf, patch_valid_bp, ctx: Ctx, image_slots_bt=None):
        """→ (embeddings (B,T,H), validity (B,T), RoPE positions (B,T)): what the LLM takes
        (the sampler's interface, shared with models/qwen_vl.QwenVL)."""
        x, valid = self.embed_inputs(ids_bt, text_valid_bt, features_bpf, patch_valid_bp, ctx, image_slots_bt)
        return x, valid, positions_from_valid(valid)

    def __call__(self, ids_bt, text_valid_bt, features_bpf, patch_valid_bp, ctx: Ctx, cache=None,
                 image_slots_bt=None):
        """Full forward without cache: returns (final hidden (B,T,H), token validity (B,T))."""
        x, valid, pos = self.inputs(ids_bt, text_valid_bt, features_bpf, patch_valid_bp, ctx, image_slots_bt)
        hidden, _ = self.llm(x, pos, valid, ctx, cache)
        return hidden, valid


def target_logprobs(logits_btv, targets_bt):
    """log_softmax(logits)[target] (B,T). Picked by a one-hot mask rather than a gather: the
    gather's gradient is a scatter, which XLA:CPU runs ~4× slower than this `where`
    (measured: the fwd+bwd of a 1152 × 4096 logit block, 103 → 84 ms); the value is the same."""
    logp = jax.nn.log_softmax(logits_btv, -1)
    pick = jnp.arange(logits_btv.shape[-1]) == targets_bt[..., None]
    return jnp.sum(jnp.where(pick, logp, 0.0), -1)


def _logprobs(llm: Qwen2, hidden_btd, targets_bt):
    return target_logprobs(llm.logits(hidden_btd), targets_bt)


def token_logprobs(llm: Qwen2, hidden_btd, targets_bt, chunk: int = 0):
    """log p(targets) from final hidden states, in fp32. hidden[t] predicts targets[t].

    With `chunk` > 0 and T > chunk, the sequence is processed `chunk` tokens at a time
    under rematerialisation, so at most one chunk's (B, chunk, V) fp32 logits are alive,
    in the backward pass too (at a 150k vocabulary the full logits dominate memory).
    """
    b, t, d = hidden_btd.shape
    if chunk <= 0 or t <= chunk:
        return _logprobs(llm, hidden_btd, targets_bt)
    n = -(-t // chunk)
    pad = n * chunk - t
    h = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
    y = jnp.pad(targets_bt, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
    step = jax.checkpoint(lambda hc, yc: _logprobs(llm, hc, yc))
    _, out = jax.lax.scan(lambda c, xs: (c, step(*xs)), None, (h, y))
    return out.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
