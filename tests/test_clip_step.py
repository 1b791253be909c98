"""The Patho-CLIP train step: cached-embedding accumulation equals the full batch; the step
sharded over 8 devices equals one device's; a few steps fit a fixed batch."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pathreasoner_jax.clip.model import ClipModelConfig, TowerConfig, build_clip
from pathreasoner_jax.clip.step import decay_mask, make_clip_step
from pathreasoner_jax.sharding import make_mesh, shard_state, use_mesh

C = ClipModelConfig(16, 8, TowerConfig(16, 1, 2, 32), TowerConfig(16, 1, 2, 32), 50, 8, 8)


def _cfg(**kw):
    base = dict(lr=1e-3, warmup_ratio=0.0, weight_decay=0.1, grad_clip=1.0, grad_accum=1, loss="infonce",
                max_logit_scale=100.0)
    return SimpleNamespace(**{**base, **kw})


def _batch(b=8, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 50, (b, 8)).astype(np.int32)
    mask = np.ones((b, 8), np.int32)
    for i in range(b):  # end-of-text (id 1) at varying lengths, padding after it
        n = 3 + i % 5
        tokens[i, n - 1], tokens[i, n:], mask[i, n:] = 1, 1, 0
    return {"pixels": rng.standard_normal((b, 16, 16, 3)).astype(np.float32), "tokens": tokens, "token_mask": mask}


def _placed(mesh, seed=0, c=C):
    model = build_clip(c, seed=seed)
    from flax import nnx
    with use_mesh(mesh):
        nnx.update(model, shard_state(nnx.state(model), mesh))
    return model


def _max_diff(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.mark.parametrize("loss,micro", [("infonce", 4), ("siglip", 2)])
def test_accumulation_equals_the_full_batch(loss, micro):
    from pathreasoner_jax.clip.model import with_siglip
    c = with_siglip(C) if loss == "siglip" else C
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    step, params, _ = make_clip_step(_placed(mesh, c=c), _cfg(loss=loss), mesh, 10)
    batch = _batch()
    l1, g1 = jax.jit(step.loss_and_grads)(params, batch)
    step.grad_accum = micro
    lm, gm = jax.jit(step.loss_and_grads)(params, batch)
    np.testing.assert_allclose(float(lm), float(l1), rtol=1e-6)
    scale = max(jax.tree.leaves(jax.tree.map(lambda x: float(jnp.max(jnp.abs(x))), g1)))
    assert _max_diff(g1, gm) <= 1e-6 * scale + 1e-6
    if loss == "siglip":
        assert abs(float(g1["logit_bias"].get_value())) > 0  # the bias is trained


def test_sharded_step_equals_one_device():
    batch = _batch(16, seed=1)
    one = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    step1, p1, o1 = make_clip_step(_placed(one), _cfg(grad_accum=2), one, 10)
    p1, o1, m1 = step1.jitted(p1, o1, batch)(p1, o1, batch, jnp.int32(0))
    mesh = make_mesh(2, 4, 1)
    step8, p8, o8 = make_clip_step(_placed(mesh), _cfg(grad_accum=2), mesh, 10)
    assert p8["vision_model"]["layers"][0]["fc1"]["kernel"].get_value().sharding.spec[0] == "fsdp"
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    b8 = {k: jax.device_put(v, rows) for k, v in batch.items()}
    p8, o8, m8 = step8.jitted(p8, o8, b8)(p8, o8, b8, jnp.int32(0))
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    assert _max_diff(p1, p8) < 1e-5


def test_steps_fit_a_fixed_batch_and_clamp_the_scale():
    mesh = make_mesh(1, 8, 1)
    step, params, opt = make_clip_step(_placed(mesh), _cfg(max_logit_scale=15.0), mesh, 10)
    batch = _batch()
    fn = step.jitted(params, opt, batch)
    losses = []
    for k in range(6):
        params, opt, m = fn(params, opt, batch, jnp.int32(k))
        losses.append(float(m["loss"]))
        assert float(m["logit_scale"]) <= 15.0 + 1e-4
    assert losses[-1] < 0.5 * losses[0]


def test_decay_mask_is_open_clips_rule():
    from flax import nnx
    mask = decay_mask(nnx.state(build_clip(C)))
    v = mask["vision_model"]
    assert v["layers"][0]["fc1"]["kernel"].get_value() and not v["layers"][0]["fc1"]["bias"].get_value()
    assert not v["layers"][0]["layer_norm1"]["scale"].get_value() and not v["class_embedding"].get_value()
    assert v["patch_embedding"].get_value() and mask["text_model"]["token_embedding"].get_value()
    assert not mask["logit_scale"].get_value() and mask["visual_projection"]["kernel"].get_value()
