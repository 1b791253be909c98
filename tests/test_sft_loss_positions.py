"""Logits only at the loss positions (`data/encode.loss_positions`): the same SFT loss sum,
denominator and gradients as over every position; the index layout checked by hand."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.data.encode import loss_positions
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sharding import make_mesh
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config


def test_loss_positions_layout():
    w = np.zeros((2, 40), np.float32)
    w[0, [3, 7, 8]] = 1.0
    w[1, 10:30] = 0.5  # 20 positions: L rounds up to 32
    out = loss_positions(w)
    assert out["loss_pos"].shape == (2, 32)
    np.testing.assert_array_equal(out["loss_pos"][0, :4], [3, 7, 8, 0])
    np.testing.assert_array_equal(out["loss_pos_valid"][0, :4], [1, 1, 1, 0])
    np.testing.assert_array_equal(out["loss_pos"][1, :20], np.arange(10, 30))
    assert out["loss_pos_valid"][1].sum() == 20
    assert loss_positions(np.zeros((1, 8), np.float32))["loss_pos"].shape == (1, 8)  # capped at T


def test_sft_loss_at_loss_positions_equals_every_position():
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model = create_model(tiny_config(lora=True), IMAGE_ID, mesh)
    full = tiny_batch()
    compact = {**full, **loss_positions(full["loss_weight"])}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, b):
        m = nnx.merge(graphdef, p, rest)
        s, d = sft_loss(m, {k: jnp.asarray(v) for k, v in b.items()}, m.ctx())
        return s, d
    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (s0, d0), g0 = grad(params, full)
    (s1, d1), g1 = grad(params, compact)
    assert float(d0) == float(d1) > 0
    np.testing.assert_allclose(float(s1), float(s0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
