"""A Patho-CLIP image tower as the patch encoder of `features` (`--encoder patho_clip`).

(B, S, S, 3) uint8 patches → (B, E) unit image embeddings: resized on device to the
tower's image size (bicubic, as conch.py does; patches are square, so CLIP's
shortest-edge resize and centre crop reduce to this), scaled to [0, 1], normalised with
CLIP's mean and std, encoded and projected. Weights: an HF CLIPModel folder
(`pathreasoner clip-export`, or any local HF CLIP).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.clip.convert import load_hf
from pathreasoner_jax.clip.model import CLIP, unit
from pathreasoner_jax.clip.preprocess import OPENAI_MEAN, OPENAI_STD


class ClipPatchEncoder(nnx.Module):
    def __init__(self, model: CLIP):
        self.clip = model
        self.input_size = model.config.image_size
        self.dim = model.config.embed_dim

    def __call__(self, x_bss3):
        x = x_bss3.astype(jnp.float32) / 255.0
        s = self.input_size
        if x.shape[1] != s:
            x = jax.image.resize(x, (x.shape[0], s, s, 3), "bicubic")
        x = (x - jnp.asarray(OPENAI_MEAN)) / jnp.asarray(OPENAI_STD)
        return unit(self.clip.encode_image(x))


def load_clip_patch_encoder(path: str) -> ClipPatchEncoder:
    model, _ = load_hf(path)
    return ClipPatchEncoder(model)
