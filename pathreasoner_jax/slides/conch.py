"""CONCH-v1-compatible visual tower in Flax NNX and its weight conversion (SPEC §4).

Architecture (MahmoodLab CONCH, open_clip CoCa `conch_ViT-B-16`): a timm ViT-B/16 trunk
(class token, learned absolute positions, pre-norm blocks with fused qkv, GELU MLP,
LayerNorm eps 1e-6, final norm) followed by the contrastive attentional pooler (one
learned query, LayerNorms on query and keys (eps 1e-5), multi-head cross-attention with
separate q/k/v projections because key width ≠ query width) and `ln_contrast`. The patch
feature is `encode_image(x, proj_contrast=False, normalize=False)`: the 512-d pooled
vector before `proj_contrast`, as TRIDENT and SlideChat use it.

Weights are read from a local safetensors file holding the visual tower in CONCH's key
layout (`visual.trunk.*`, `visual.attn_pool_contrast.*`, `visual.ln_contrast.*`; the
`visual.` prefix is optional and other keys are ignored). Pickled checkpoints
(`pytorch_model.bin`) are refused: convert them once with
`safetensors.torch.save_file(torch.load(p, weights_only=True), out)`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.core.errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ConchConfig:
    image_size: int = 448
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    embed_dim: int = 512
    pooler_heads: int = 8
    n_queries: int = 1


class _Block(nnx.Module):
    def __init__(self, c: ConchConfig, rngs: nnx.Rngs):
        self.heads = c.heads
        self.norm1 = nnx.LayerNorm(c.width, epsilon=1e-6, rngs=rngs)
        self.qkv = nnx.Linear(c.width, 3 * c.width, rngs=rngs)
        self.proj = nnx.Linear(c.width, c.width, rngs=rngs)
        self.norm2 = nnx.LayerNorm(c.width, epsilon=1e-6, rngs=rngs)
        self.fc1 = nnx.Linear(c.width, c.mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(c.mlp_dim, c.width, rngs=rngs)

    def __call__(self, x_btw):
        b, t, w = x_btw.shape
        qkv = self.qkv(self.norm1(x_btw)).reshape(b, t, 3, self.heads, w // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        att = jax.nn.dot_product_attention(q, k, v)  # softmax(q·k/√d)·v per head
        x_btw = x_btw + self.proj(att.reshape(b, t, w))
        h = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x_btw)), approximate=False))
        return x_btw + h


class ConchVisual(nnx.Module):
    """(B, S, S, 3) uint8 patches (any S; resized to image_size) → (B, embed_dim) float32."""

    def __init__(self, c: ConchConfig, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.config = c
        self.input_size = c.image_size
        self.dim = c.embed_dim
        g = c.image_size // c.patch_size
        self.patch_embed = nnx.Conv(3, c.width, (c.patch_size,) * 2, strides=c.patch_size,
                                    padding="VALID", rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, c.width)))
        self.pos_embed = nnx.Param(jnp.zeros((1, 1 + g * g, c.width)))
        self.blocks = nnx.List([_Block(c, rngs) for _ in range(c.layers)])
        self.norm = nnx.LayerNorm(c.width, epsilon=1e-6, rngs=rngs)
        d = c.embed_dim
        self.query = nnx.Param(jnp.zeros((c.n_queries, d)))
        self.ln_q = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.ln_k = nnx.LayerNorm(c.width, epsilon=1e-5, rngs=rngs)
        self.q_proj = nnx.Linear(d, d, rngs=rngs)
        self.k_proj = nnx.Linear(c.width, d, rngs=rngs)
        self.v_proj = nnx.Linear(c.width, d, rngs=rngs)
        self.out_proj = nnx.Linear(d, d, rngs=rngs)
        self.ln_contrast = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)

    def __call__(self, x_bss3):
        c = self.config
        x = x_bss3.astype(jnp.float32) / 255.0
        if x.shape[1] != c.image_size:
            x = jax.image.resize(x, (x.shape[0], c.image_size, c.image_size, 3), "bicubic")
        x = (x - jnp.asarray(OPENAI_MEAN)) / jnp.asarray(OPENAI_STD)
        t = self.patch_embed(x)  # (B, g, g, W)
        b = t.shape[0]
        t = t.reshape(b, -1, c.width)
        t = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (b, 1, c.width)), t], 1)
        t = t + self.pos_embed[...]
        for blk in self.blocks:
            t = blk(t)
        t = self.ln_k(self.norm(t))
        q = self.ln_q(self.query[...])  # (Q, d)
        hd = c.embed_dim // c.pooler_heads
        qh = self.q_proj(q).reshape(1, -1, c.pooler_heads, hd).repeat(b, 0)
        kh = self.k_proj(t).reshape(b, -1, c.pooler_heads, hd)
        vh = self.v_proj(t).reshape(b, -1, c.pooler_heads, hd)
        pooled = self.out_proj(jax.nn.dot_product_attention(qh, kh, vh).reshape(b, -1, c.embed_dim))
        return self.ln_contrast(pooled[:, 0])


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise UserError(f"{path}: CONCH weights not found")
    if not path.endswith(".safetensors"):
        raise UserError(f"{path}: only .safetensors weights are read (no pickle); convert with "
                        "safetensors.torch.save_file(torch.load(p, weights_only=True), 'conch.safetensors')")
    from safetensors.numpy import load_file
    try:
        sd = load_file(path)
    except Exception as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    out = {}
    for k, v in sd.items():
        k2 = k[len("visual."):] if k.startswith("visual.") else k
        if k2.startswith(("trunk.", "attn_pool_contrast.", "ln_contrast.")):
            out[k2] = np.asarray(v, np.float32)
    return out


def config_from_state(sd: dict[str, np.ndarray], heads: int | None = None, pooler_heads: int = 8) -> ConchConfig:
    """Infers the sizes from tensor shapes; head counts are not in the shapes (CONCH: 64-d heads)."""
    try:
        w, _, p, _ = sd["trunk.patch_embed.proj.weight"].shape
        g2 = sd["trunk.pos_embed"].shape[1] - 1
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"trunk\.blocks\.(\d+)\.", k)))
        mlp = sd["trunk.blocks.0.mlp.fc1.weight"].shape[0]
        nq, d = sd["attn_pool_contrast.query"].shape
    except (KeyError, ValueError) as e:
        raise UserError(f"CONCH weights lack the visual tower layout (missing {e})") from None
    return ConchConfig(image_size=int(round(g2 ** 0.5)) * p, patch_size=p, width=w, layers=layers,
                       heads=heads or max(1, w // 64), mlp_dim=mlp, embed_dim=d,
                       pooler_heads=pooler_heads, n_queries=nq)


def _set(param, value: np.ndarray, name: str) -> None:
    if tuple(param.get_value().shape) != tuple(value.shape):
        raise UserError(f"CONCH weight {name}: shape {value.shape}, expected {param.get_value().shape}")
    param.set_value(jnp.asarray(value))


def load_conch(path: str, heads: int | None = None, pooler_heads: int = 8) -> ConchVisual:
    """Builds a ConchVisual from a local safetensors checkpoint in CONCH's layout."""
    sd = _load_safetensors(path)
    c = config_from_state(sd, heads, pooler_heads)
    m = ConchVisual(c)
    T = "trunk."
    try:
        _set(m.patch_embed.kernel, sd[T + "patch_embed.proj.weight"].transpose(2, 3, 1, 0), "patch_embed")
        _set(m.patch_embed.bias, sd[T + "patch_embed.proj.bias"], "patch_embed.bias")
        _set(m.cls_token, sd[T + "cls_token"], "cls_token")
        _set(m.pos_embed, sd[T + "pos_embed"], "pos_embed")
        for i, blk in enumerate(m.blocks):
            p = f"{T}blocks.{i}."
            for mod, key in ((blk.norm1, "norm1"), (blk.norm2, "norm2")):
                _set(mod.scale, sd[p + key + ".weight"], p + key)
                _set(mod.bias, sd[p + key + ".bias"], p + key)
            for mod, key in ((blk.qkv, "attn.qkv"), (blk.proj, "attn.proj"), (blk.fc1, "mlp.fc1"), (blk.fc2, "mlp.fc2")):
                _set(mod.kernel, sd[p + key + ".weight"].T, p + key)
                _set(mod.bias, sd[p + key + ".bias"], p + key)
        _set(m.norm.scale, sd[T + "norm.weight"], "norm")
        _set(m.norm.bias, sd[T + "norm.bias"], "norm")
        A = "attn_pool_contrast."
        _set(m.query, sd[A + "query"], "query")
        for mod, key in ((m.ln_q, A + "ln_q"), (m.ln_k, A + "ln_k"), (m.ln_contrast, "ln_contrast")):
            _set(mod.scale, sd[key + ".weight"], key)
            _set(mod.bias, sd[key + ".bias"], key)
        d = c.embed_dim
        if A + "attn.in_proj_weight" in sd:  # torch packs q/k/v when key width == query width
            wq, wk, wv = np.split(sd[A + "attn.in_proj_weight"], 3, axis=0)
        else:
            wq, wk, wv = (sd[A + f"attn.{n}_proj_weight"] for n in "qkv")
        bq, bk, bv = np.split(sd[A + "attn.in_proj_bias"], 3) if A + "attn.in_proj_bias" in sd \
            else (np.zeros(d, np.float32),) * 3
        for mod, wgt, bias in ((m.q_proj, wq, bq), (m.k_proj, wk, bk), (m.v_proj, wv, bv)):
            _set(mod.kernel, wgt.T, "attn_pool_contrast.attn")
            _set(mod.bias, bias, "attn_pool_contrast.attn")
        _set(m.out_proj.kernel, sd[A + "attn.out_proj.weight"].T, "out_proj")
        _set(m.out_proj.bias, sd[A + "attn.out_proj.bias"], "out_proj")
    except KeyError as e:
        raise UserError(f"{path}: CONCH weights lack {e}") from None
    return m
