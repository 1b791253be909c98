"""Context parallelism on 8 CPU devices: LongNet's dilated attention and the whole VLM
loss with the sequence split over the `context` mesh axis equal the one-device result."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pathreasoner_jax.models.longnet import dilated_attention
from pathreasoner_jax.models.longnet_context import context_dilated_attention, local_length
from pathreasoner_jax.sharding import make_mesh, use_mesh
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config

SEGS, DILS = (16, 32, 64, 128, 512), (1, 2, 4, 8, 16)


def test_local_length_by_hand():
    # 300 patches on 8 devices: ⌈300/8⌉ = 38; branches 16/32/64 must not straddle shards
    # (L a multiple of 64), 128 and 512 span 2 and 8 shards of 64 (64 divisible by r = 8, 16)
    assert local_length(300, 8, SEGS, DILS) == 64
    assert local_length(65536, 8, (1024, 2048, 4096, 8192, 16384), (1, 2, 4, 8, 16)) == 8192
    with pytest.raises(ValueError, match="powers of two"):
        local_length(100, 8, (24, 40), (1, 3))


def test_dilated_attention_and_gradients_split_8_ways_equal_one_device():
    mesh = make_mesh(1, 1, 1, context=8)
    rng = np.random.default_rng(0)
    b, n, h, dh = 2, 300, 4, 8  # 300 is not a multiple of the 64-position shards
    q, k, v = (jnp.asarray(rng.standard_normal((b, n, h, dh)), jnp.float32) for _ in range(3))
    valid = jnp.asarray(np.arange(n)[None] < np.array([[300], [217]]))  # row 1 ends in padding
    keep = valid[..., None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(keep, fn(q, k, v), 0.0) ** 2)
    one = loss(lambda q, k, v: dilated_attention(q, k, v, valid, SEGS, DILS))
    split = loss(lambda q, k, v: context_dilated_attention(q, k, v, valid, SEGS, DILS, mesh, None))
    np.testing.assert_allclose(jax.jit(split)(q, k, v), jax.jit(one)(q, k, v), rtol=1e-5)
    out_one = jax.jit(lambda *a: dilated_attention(*a, valid, SEGS, DILS))(q, k, v)
    out_split = jax.jit(lambda *a: context_dilated_attention(*a, valid, SEGS, DILS, mesh, None))(q, k, v)
    np.testing.assert_allclose(np.where(keep, out_split, 0), np.where(keep, out_one, 0), atol=1e-5)
    for g1, g8 in zip(jax.jit(jax.grad(one, (0, 1, 2)))(q, k, v), jax.jit(jax.grad(split, (0, 1, 2)))(q, k, v)):
        scale = float(jnp.abs(g1).max())
        np.testing.assert_allclose(g8, g1, atol=1e-5 * scale)


def _vlm_loss_and_grads(mesh, batch):
    from pathreasoner_jax.models.factory import create_model
    from pathreasoner_jax.sft.loss import sft_loss
    cfg = tiny_config(lora=False)
    cfg.slide = dataclasses.replace(cfg.slide, segment_lengths=[8, 16, 64], dilations=[1, 2, 4])
    with use_mesh(mesh):
        model = create_model(cfg, IMAGE_ID, mesh, seed=0)
        placed = jax.device_put(batch, NamedSharding(mesh, P(("data", "fsdp"))))

        @nnx.jit
        def f(model, batch):
            def loss(model):
                s, n = sft_loss(model, batch, model.ctx())
                return s / n
            return nnx.value_and_grad(loss)(model)
        value, grads = f(model, placed)
        return float(value), {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(grads)}


def _long_short_batch():
    """Row 0 a 'long' slide (all 40 patches), row 1 a short one (5 patches), rows 2–3 between."""
    b = tiny_batch(batch=4, text=64, patches=40)
    b["patch_valid"][:] = np.arange(40)[None] < np.array([[40], [5], [23], [31]])
    return b


@pytest.mark.parametrize("cases", [
    ((8, 1),),
    pytest.param(((2, 1), (4, 2)), marks=pytest.mark.slow),  # the suite's time budget: one mesh by default
])
def test_vlm_loss_and_gradients_with_context_axis_equal_one_device(cases):
    batch = _long_short_batch()
    ref_loss, ref_grads = _vlm_loss_and_grads(make_mesh(1, 1, 1, devices=jax.devices()[:1]), batch)
    for context, fsdp in cases:
        loss, grads = _vlm_loss_and_grads(make_mesh(1, fsdp, 1, devices=jax.devices()[:context * fsdp],
                                                    context=context), batch)
        assert abs(loss - ref_loss) < 1e-5 * max(1.0, abs(ref_loss)), context
        assert grads.keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            np.testing.assert_allclose(grads[name], g, atol=1e-5 * max(1e-3, float(np.abs(g).max())),
                                       err_msg=f"context {context}: {name}")

