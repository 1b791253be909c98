"""CLIP in Flax NNX: the open_clip / Hugging Face `CLIPModel` architecture.

Image tower: 14/16-px patches (a bias-free linear map, the HF conv), a class token and
learned absolute positions, `pre_layrnorm`, pre-norm encoder blocks (q/k/v/out
projections with bias, MLP fc1 → act → fc2), `post_layernorm` on the class token, a
bias-free `visual_projection`. Text tower: token + learned position embeddings, the same
blocks under a causal mask (and the padding mask), `final_layer_norm`, the hidden state
at the end-of-text token (`pool="eos"`: its first occurrence, HF; `"argmax"`: the largest
id, OpenAI / open_clip, where end-of-text is the last id), a bias-free `text_projection`.
`logit_scale` is learned (init log 1/0.07); a SigLIP run adds `logit_bias` (init -10,
scale init log 10, as in the SigLIP paper).

Attribute names follow the HF layout, so conversion (convert.py) is a key rename and a
transpose. Pixels are channels-last (B, S, S, 3), already normalised (preprocess.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.models.layers import Ctx, LayerNorm, Linear
from pathreasoner_jax.sharding import constrain


@dataclass(frozen=True)
class TowerConfig:
    width: int
    layers: int
    heads: int
    mlp_dim: int


@dataclass(frozen=True)
class ClipModelConfig:
    image_size: int = 64
    patch_size: int = 16
    vision: TowerConfig = field(default_factory=lambda: TowerConfig(64, 2, 4, 256))
    text: TowerConfig = field(default_factory=lambda: TowerConfig(64, 2, 4, 256))
    vocab_size: int = 1024
    context_length: int = 32
    embed_dim: int = 64
    act: str = "gelu"  # gelu (open_clip's nn.GELU) | quick_gelu (OpenAI CLIP, HF's default)
    eps: float = 1e-5
    pool: str = "eos"  # eos | argmax (see the module docstring)
    eos_token_id: int = 1
    logit_bias_init: Optional[float] = None  # set: a SigLIP logit bias exists

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PRESETS = {
    "tiny": ClipModelConfig(),
    "vit_b_16": ClipModelConfig(224, 16, TowerConfig(768, 12, 12, 3072), TowerConfig(512, 12, 8, 2048),
                                49408, 77, 512, pool="argmax", eos_token_id=49407),
    "vit_l_14": ClipModelConfig(224, 14, TowerConfig(1024, 24, 16, 4096), TowerConfig(768, 12, 12, 3072),
                                49408, 77, 768, pool="argmax", eos_token_id=49407),
}
ACTS = ("gelu", "quick_gelu")
POOLS = ("eos", "argmax")


def with_siglip(c: ClipModelConfig) -> ClipModelConfig:
    return c if c.logit_bias_init is not None else replace(c, logit_bias_init=-10.0)


def _act(name: str, x):
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    return jax.nn.gelu(x, approximate=False)


class EncoderLayer(nnx.Module):
    """Pre-norm block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, t: TowerConfig, act: str, eps: float, rngs: nnx.Rngs, param_dtype=jnp.float32):
        w = t.width
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.heads, self.act = t.heads, act
        self.layer_norm1 = LayerNorm(w, eps, param_dtype)
        self.q_proj = Linear(w, w, axes=("embed", "q_heads"), **kw)
        self.k_proj = Linear(w, w, axes=("embed", "q_heads"), **kw)
        self.v_proj = Linear(w, w, axes=("embed", "q_heads"), **kw)
        self.out_proj = Linear(w, w, axes=("q_heads", "embed"), **kw)
        self.layer_norm2 = LayerNorm(w, eps, param_dtype)
        self.fc1 = Linear(w, t.mlp_dim, axes=("embed", "mlp"), **kw)
        self.fc2 = Linear(t.mlp_dim, w, axes=("mlp", "embed"), **kw)

    def __call__(self, x_btw, mask_b1tt, ctx: Ctx):
        b, t, w = x_btw.shape
        h = self.layer_norm1(x_btw)
        split = lambda y: y.reshape(b, t, self.heads, w // self.heads)  # noqa: E731
        q, k, v = (split(p(h, ctx)) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = jax.nn.dot_product_attention(q, k, v, mask=mask_b1tt, implementation="xla")
        x_btw = x_btw + self.out_proj(a.reshape(b, t, w), ctx)
        h = _act(self.act, self.fc1(self.layer_norm2(x_btw), ctx))
        x_btw = x_btw + self.fc2(h, ctx)
        return constrain(x_btw, ("batch", None, "act_embed"))


def _embedding(rngs, shape, std, axes, dtype):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype), logical_axes=axes)


class VisionTower(nnx.Module):
    def __init__(self, c: ClipModelConfig, rngs: nnx.Rngs, param_dtype=jnp.float32):
        w, p = c.vision.width, c.patch_size
        self.patch_size = p
        self.patch_embedding = _embedding(rngs, (p * p * 3, w), 1 / math.sqrt(p * p * 3), ("patch_in", "embed"),
                                          param_dtype)
        self.class_embedding = _embedding(rngs, (w,), w ** -0.5, ("embed",), param_dtype)
        self.position_embedding = _embedding(rngs, (c.num_patches + 1, w), 0.02, (None, "embed"), param_dtype)
        self.pre_layrnorm = LayerNorm(w, c.eps, param_dtype)
        self.layers = nnx.List([EncoderLayer(c.vision, c.act, c.eps, rngs, param_dtype) for _ in range(c.vision.layers)])
        self.post_layernorm = LayerNorm(w, c.eps, param_dtype)

    def __call__(self, pixels_bhwc, ctx: Ctx):
        """(B, S, S, 3) → pooled (B, W): the class token after post_layernorm."""
        b, s, _, _ = pixels_bhwc.shape
        p, g = self.patch_size, s // self.patch_size
        # (B, g, p, g, p, 3) → (B, g·g, p·p·3): row-major patches, each (ph, pw, c), as the conv sees them
        x = pixels_bhwc[:, :g * p, :g * p].reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
        x = jnp.dot(x.reshape(b, g * g, p * p * 3).astype(ctx.dtype), self.patch_embedding[...].astype(ctx.dtype))
        cls = jnp.broadcast_to(self.class_embedding[...].astype(ctx.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(ctx.dtype)
        x = self.pre_layrnorm(x)
        for layer in self.layers:
            x = layer(x, None, ctx)
        return self.post_layernorm(x[:, 0])


class TextTower(nnx.Module):
    def __init__(self, c: ClipModelConfig, rngs: nnx.Rngs, param_dtype=jnp.float32):
        w = c.text.width
        self.pool, self.eos_token_id = c.pool, c.eos_token_id
        self.token_embedding = _embedding(rngs, (c.vocab_size, w), 0.02, ("vocab", "embed"), param_dtype)
        self.position_embedding = _embedding(rngs, (c.context_length, w), 0.01, (None, "embed"), param_dtype)
        self.layers = nnx.List([EncoderLayer(c.text, c.act, c.eps, rngs, param_dtype) for _ in range(c.text.layers)])
        self.final_layer_norm = LayerNorm(w, c.eps, param_dtype)

    def __call__(self, tokens_bl, mask_bl, ctx: Ctx):
        """(B, L) ids and 0/1 mask → pooled (B, W) at the end-of-text token."""
        b, t = tokens_bl.shape
        x = self.token_embedding[...].astype(ctx.dtype)[tokens_bl] + self.position_embedding[...][:t].astype(ctx.dtype)
        causal = jnp.tril(jnp.ones((t, t), bool))
        mask = causal[None, None] & (mask_bl[:, None, None, :] > 0)
        for layer in self.layers:
            x = layer(x, mask, ctx)
        x = self.final_layer_norm(x)
        at = jnp.argmax(tokens_bl == self.eos_token_id, -1) if self.pool == "eos" else jnp.argmax(tokens_bl, -1)
        return x[jnp.arange(b), at]


class CLIP(nnx.Module):
    def __init__(self, c: ClipModelConfig, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.config = c
        self.vision_model = VisionTower(c, rngs, param_dtype)
        self.text_model = TextTower(c, rngs, param_dtype)
        kw = dict(rngs=rngs, bias=False, param_dtype=param_dtype)
        self.visual_projection = Linear(c.vision.width, c.embed_dim, axes=("embed", "clip_embed"), **kw)
        self.text_projection = Linear(c.text.width, c.embed_dim, axes=("embed", "clip_embed"), **kw)
        siglip = c.logit_bias_init is not None
        self.logit_scale = nnx.Param(jnp.asarray(math.log(10.0) if siglip else math.log(1 / 0.07), param_dtype),
                                     logical_axes=())
        self.logit_bias = (nnx.Param(jnp.asarray(c.logit_bias_init, param_dtype), logical_axes=())
                           if siglip else None)

    def encode_image(self, pixels_bhwc, ctx: Ctx = Ctx()):
        """(B, S, S, 3) normalised pixels → (B, E) image embeddings (not unit length)."""
        return self.visual_projection(self.vision_model(pixels_bhwc, ctx), ctx).astype(jnp.float32)

    def encode_text(self, tokens_bl, mask_bl, ctx: Ctx = Ctx()):
        """(B, L) token ids, (B, L) 0/1 mask → (B, E) text embeddings (not unit length)."""
        return self.text_projection(self.text_model(tokens_bl, mask_bl, ctx), ctx).astype(jnp.float32)

    def __call__(self, pixels_bhwc, tokens_bl, mask_bl, ctx: Ctx = Ctx()):
        """→ (unit image embeddings (B, E), unit text embeddings (B, E))."""
        return unit(self.encode_image(pixels_bhwc, ctx)), unit(self.encode_text(tokens_bl, mask_bl, ctx))


def unit(x_be):
    return x_be / jnp.linalg.norm(x_be, axis=-1, keepdims=True)


def build_clip(c: ClipModelConfig, seed: int = 0, param_dtype=jnp.float32) -> CLIP:
    return CLIP(c, nnx.Rngs(seed), param_dtype)
