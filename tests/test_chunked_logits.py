"""Chunked fp32 logits in the loss give the same log-probs and gradients as the full ones."""
import numpy as np

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sharding import make_mesh
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config


def test_chunked_loss_equals_full_loss_and_gradients():
    model = create_model(tiny_config(lora=False), IMAGE_ID, make_mesh(1, 1, 1, jax.devices()[:1]))
    batch = {k: jnp.asarray(v) for k, v in tiny_batch(text=24).items()}

    def loss(m, chunk):
        s, n = sft_loss(m, batch, m.ctx(), logits_chunk=chunk)
        return s / n
    full, g_full = nnx.jit(nnx.value_and_grad(lambda m: loss(m, 0)))(model)
    part, g_part = nnx.jit(nnx.value_and_grad(lambda m: loss(m, 7)))(model)  # 24 tokens = 3 chunks + padding
    assert abs(float(full) - float(part)) < 1e-5
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_part)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
