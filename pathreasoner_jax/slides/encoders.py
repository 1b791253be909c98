"""Patch encoders behind one interface: batched, jitted, fixed batch shape.

`build_encoder("demo")`, `build_encoder("conch_v1", weights="conch.safetensors")` or
`build_encoder("patho_clip", weights="<clip-export folder>")` (a trained Patho-CLIP image
tower: the unit image embedding, as CLIP encoders serve as patch encoders) returns a `PatchEncoder`; calling it on (B, S, S, 3) uint8 patches returns (B, D)
float32 features. Batches are padded to `batch_size` so XLA compiles one program.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from pathreasoner_jax.core.errors import UserError

ENCODERS = ("demo", "conch_v1", "patho_clip")


class PatchEncoder:
    """Wraps an NNX module as a pure jitted function of (state, patches)."""

    def __init__(self, module: nnx.Module, name: str, batch_size: int = 64):
        self.name = name
        self.input_size = int(module.input_size)
        self.dim = int(module.dim)
        self.batch_size = int(batch_size)
        graphdef, self._state = nnx.split(module)

        @jax.jit
        def forward(state, x_bss3):
            return nnx.merge(graphdef, state)(x_bss3)

        self._forward = forward

    def encode_async(self, patches_bss3: np.ndarray) -> jax.Array:
        """Dispatches one batch (≤ batch_size patches) without waiting; (B, D) on device."""
        n = patches_bss3.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} > batch_size {self.batch_size}")
        if n < self.batch_size:  # pad: one compiled shape for every batch
            pad = np.zeros((self.batch_size - n,) + patches_bss3.shape[1:], patches_bss3.dtype)
            patches_bss3 = np.concatenate([patches_bss3, pad])
        return self._forward(self._state, patches_bss3)[:n]

    def __call__(self, patches_bss3: np.ndarray) -> np.ndarray:
        outs = [np.asarray(self.encode_async(patches_bss3[i:i + self.batch_size]))
                for i in range(0, len(patches_bss3), self.batch_size)]
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(outs).astype(np.float32)


def build_encoder(name: str, weights: str = "", batch_size: int = 64, heads: int | None = None) -> PatchEncoder:
    """name: "demo" (fixed-seed, no weights) or "conch_v1" (local safetensors weights)."""
    if name == "demo":
        from pathreasoner_jax.slides.demo_encoder import DemoEncoder
        return PatchEncoder(DemoEncoder(), "demo", batch_size)
    if name == "conch_v1":
        if not weights:
            raise UserError("encoder conch_v1 needs local weights (data.encoder_weights / --encoder-weights)")
        from pathreasoner_jax.slides.conch import load_conch
        return PatchEncoder(load_conch(weights, heads=heads), "conch_v1", batch_size)
    if name == "patho_clip":
        if not weights:
            raise UserError("encoder patho_clip needs a local HF CLIP folder (data.encoder_weights / --encoder-weights; "
                            "`pathreasoner clip-export` writes one)")
        from pathreasoner_jax.clip.patch_encoder import load_clip_patch_encoder
        return PatchEncoder(load_clip_patch_encoder(weights), "patho_clip", batch_size)
    raise UserError(f"unknown patch encoder {name!r} (known: {', '.join(ENCODERS)})")
