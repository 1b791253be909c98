"""The small deterministic `demo` patch encoder (SPEC §4): 512-d features, no weights.

Parameters come from a fixed seed, so every machine computes the same features. The
features combine what separates H&E tissue classes at a glance: a soft colour
histogram (eosin pink vs haematoxylin blue vs white lumen) and the mean/std responses
of two fixed random convolution layers (texture: nuclear density, gland rings, keratin
swirls). A fixed random projection maps them to 512 dimensions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DEMO_DIM = 512
DEMO_INPUT = 64


class DemoEncoder(nnx.Module):
    """(B, 64, 64, 3) uint8 patches → (B, 512) float32 features."""

    input_size = DEMO_INPUT
    dim = DEMO_DIM

    def __init__(self, seed: int = 0, bins_per_channel: int = 4):
        rngs = nnx.Rngs(seed)
        self.conv1 = nnx.Conv(3, 32, (5, 5), strides=2, padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, padding="SAME", rngs=rngs)
        g = (np.arange(bins_per_channel) + 0.5) / bins_per_channel
        centres = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        self.centres = nnx.Variable(jnp.asarray(centres, jnp.float32))  # (C, 3), not trained
        self.sigma = 0.5 / bins_per_channel
        n_in = centres.shape[0] + 2 * 32 + 2 * 64
        self.proj = nnx.Linear(n_in, DEMO_DIM, rngs=rngs)

    def __call__(self, x_bhw3: jax.Array) -> jax.Array:
        x = x_bhw3.astype(jnp.float32) / 255.0
        b, h, w, _ = x.shape
        # colour statistics need no full resolution: 4×4 average pooling first
        small = x.reshape(b, h // 4, 4, w // 4, 4, 3).mean(axis=(2, 4))
        d2 = jnp.sum((small[..., None, :] - self.centres[...]) ** 2, axis=-1)  # (B, h/4, w/4, C)
        hist = jnp.mean(jax.nn.softmax(-d2 / (2 * self.sigma ** 2), axis=-1), axis=(1, 2))
        h1 = jax.nn.relu(self.conv1(x - 0.5))
        h2 = jax.nn.relu(self.conv2(h1))
        stats = [jnp.mean(h1, (1, 2)), jnp.std(h1, (1, 2)), jnp.mean(h2, (1, 2)), jnp.std(h2, (1, 2))]
        # the histogram sums to 1 over 64 bins; scale it to the conv statistics' range
        z = jnp.concatenate([hist * 8.0] + stats, axis=-1)
        return self.proj(z)
