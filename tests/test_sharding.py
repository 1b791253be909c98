"""Sharded forward + loss on an 8-device CPU mesh equals one device; parameters follow the rules."""
import numpy as np

import jax
from flax import nnx
from jax.sharding import NamedSharding

from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sharding import LOGICAL_RULES, make_mesh, use_mesh
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config


def _loss(mesh):
    with use_mesh(mesh):
        model = create_model(tiny_config(), IMAGE_ID, mesh, seed=0)
        batch = jax.device_put(tiny_batch(), NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))

        @nnx.jit
        def f(model, batch):
            s, n = sft_loss(model, batch, model.ctx())
            return s / n
        return float(f(model, batch)), model


def test_sharded_loss_equals_single_device():
    assert jax.device_count() == 8
    single, _ = _loss(make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    sharded, model = _loss(make_mesh(2, 2, 2))
    assert abs(single - sharded) < 1e-5 * max(1.0, abs(single))


def test_every_parameter_follows_its_rule():
    mesh = make_mesh(2, 2, 2)
    with use_mesh(mesh):
        model = create_model(tiny_config(), IMAGE_ID, mesh)
    rules = dict(LOGICAL_RULES)
    checked = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        axes = var.get_metadata()["logical_axes"]
        value = var.get_value()
        expected = []
        for dim, name in zip(value.shape, axes):
            target = rules.get(name)
            size = mesh.shape[target] if isinstance(target, str) else int(np.prod([mesh.shape[a] for a in target])) if target else 1
            expected.append(target if target and dim % size == 0 else None)
        spec = tuple(value.sharding.spec) + (None,) * (value.ndim - len(value.sharding.spec))
        assert spec == tuple(expected), (path, spec, expected)
        checked += 1
    assert checked > 40
    # the big matrices really are split: the q projection over fsdp × tensor
    q = model.llm.layers[0].self_attn.q_proj.kernel.get_value()
    assert q.addressable_shards[0].data.shape == (64 // 2, 64 // 2)
