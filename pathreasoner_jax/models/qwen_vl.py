"""Qwen2.5-VL: the vision tower's merged tokens spliced into a Qwen2 decoder at the
`<|image_pad|>` placeholders, with M-RoPE positions.

It has PathVLM's interface (`ctx`, `llm`, `inputs`, `__call__` over ids / text validity /
visual input / visual-token validity), so the SFT step, the sampler and the GRPO learner
drive either model. The visual input is the dict of `vl/preprocess.pack_images`.

M-RoPE (HF `get_rope_index`), vectorised: walking a row, a text token advances the
position by 1 and an image by max(h, w) of its merged grid; an image token sits at the
image's start plus its (t, h, w) index. With `inc` = 1 per valid text token and the
image's extent at its last token (0 elsewhere), the start of every token is the exclusive
cumulative sum of `inc` — padding advances nothing, so left padding needs no special case,
and the next free position (decoding) is the row's maximum + 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.models.layers import Ctx, uid_scope
from pathreasoner_jax.models.qwen2 import Qwen2, Qwen2Dims
from pathreasoner_jax.models.qwen_vision import VisionDims, VisionTower

VISION_KEYS = ("pixels", "patch_hw", "patch_seg", "patch_window", "token_thw", "token_ext")


def mrope_positions(is_image_bt, valid_bt, token_thw_bq3, token_ext_bq) -> jax.Array:
    """(B,T,3) M-RoPE ids; the k-th image token of a row is merged token k."""
    q = token_ext_bq.shape[1]
    rank = jnp.clip(jnp.cumsum(is_image_bt, axis=1) - 1, 0, max(q - 1, 0))
    thw = jnp.take_along_axis(token_thw_bq3, rank[..., None], axis=1)
    ext = jnp.take_along_axis(token_ext_bq, rank, axis=1)
    inc = jnp.where(is_image_bt, ext, valid_bt.astype(jnp.int32))
    start = jnp.cumsum(inc, axis=1) - inc
    return start[..., None] + jnp.where(is_image_bt[..., None], thw, 0)


class QwenVL(nnx.Module):
    def __init__(self, dims: Qwen2Dims, vdims: VisionDims, rngs: nnx.Rngs, image_token_id: int,
                 param_dtype=jnp.float32, compute_dtype=jnp.float32, logits_chunk: int = 0):
        self.dims, self.vdims = dims, vdims
        with uid_scope():
            self.visual = VisionTower(vdims, rngs, param_dtype)
            self.llm = Qwen2(dims, rngs, param_dtype)
        self.image_token_id = image_token_id
        self.compute_dtype = compute_dtype
        self.logits_chunk = logits_chunk

    def ctx(self, rng=None, use_lora: bool = True) -> Ctx:
        return Ctx(rng=rng, use_lora=use_lora, dtype=self.compute_dtype)

    def inputs(self, ids_bt, text_valid_bt, vision, token_valid_bq, ctx: Ctx, image_slots_bt=None):
        """→ (embeddings (B,T,D), validity (B,T), M-RoPE positions (B,T,3)).

        `vision` None: text only (positions still (B,T,3), three equal ids)."""
        x = self.llm.embed(ids_bt, ctx)
        if vision is None:
            pos = jnp.maximum(jnp.cumsum(text_valid_bt.astype(jnp.int32), axis=1) - 1, 0)
            return x, text_valid_bt, jnp.repeat(pos[..., None], 3, -1)
        is_image = (ids_bt == self.image_token_id) if image_slots_bt is None else image_slots_bt
        is_image = is_image & text_valid_bt
        tokens = self.visual(vision, ctx).astype(x.dtype)  # (B,Q,D)
        rank = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, tokens.shape[1] - 1)
        x = jnp.where(is_image[..., None], jnp.take_along_axis(tokens, rank[..., None], axis=1), x)
        valid = text_valid_bt & (~is_image | jnp.take_along_axis(token_valid_bq, rank, axis=1))
        pos = mrope_positions(is_image, valid, vision["token_thw"], vision["token_ext"])
        return x, valid, pos

    def __call__(self, ids_bt, text_valid_bt, vision, token_valid_bq, ctx: Ctx, cache=None, image_slots_bt=None):
        """Full forward without cache: (final hidden (B,T,D), token validity (B,T))."""
        x, valid, pos = self.inputs(ids_bt, text_valid_bt, vision, token_valid_bq, ctx, image_slots_bt)
        hidden, _ = self.llm(x, pos, valid, ctx, cache)
        return hidden, valid


def vision_dims_from_hf(c: dict, remat: bool = False) -> VisionDims:
    """VisionDims from a Qwen2.5-VL config.json's `vision_config`."""
    v = c["vision_config"]
    rope = (v.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return VisionDims(depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                      num_heads=v["num_heads"], out_hidden_size=v["out_hidden_size"],
                      fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", ())),
                      patch_size=v.get("patch_size", 14), temporal_patch_size=v.get("temporal_patch_size", 2),
                      in_channels=v.get("in_channels", 3), spatial_merge_size=v.get("spatial_merge_size", 2),
                      window_size=v.get("window_size", 112), rope_theta=float(rope), remat=remat)

