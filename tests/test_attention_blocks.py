"""Causal attention in query blocks (`model.attention_block`) equals one block: the forward
on left-padded rows (T not a multiple of the block), its gradients, and greedy sampling
through a fresh cache."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sharding import make_mesh
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config


def _pair():
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    one = create_model(tiny_config(lora=False), IMAGE_ID, mesh)
    blocked = create_model(dataclasses.replace(tiny_config(lora=False), attention_block=5), IMAGE_ID, mesh)
    assert blocked.llm.d.attention_block == 5 and one.llm.d.attention_block == 0
    return one, blocked


def test_blocked_forward_and_gradients_equal_one_block():
    one, blocked = _pair()
    b = {k: jnp.asarray(v) for k, v in tiny_batch(text=23).items()}
    valid = np.array(b["text_valid"])
    valid[2, :4] = False  # a left-padded row too
    b["text_valid"] = jnp.asarray(valid)

    def loss(model):
        hidden, v = model(b["ids"], b["text_valid"], b["features"], b["patch_valid"], model.ctx())
        return jnp.sum(jnp.where(v[..., None], hidden, 0.0) ** 2), hidden
    vg = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
    (l0, h0), g0 = vg(one)
    (l1, h1), g1 = vg(blocked)
    np.testing.assert_allclose(np.asarray(h1)[valid], np.asarray(h0)[valid], atol=1e-5)
    leaves0 = [np.asarray(a) for a in jax.tree.leaves(nnx.state(g0))]
    leaves1 = [np.asarray(c) for c in jax.tree.leaves(nnx.state(g1))]
    total = np.sqrt(sum(np.sum(a * a) for a in leaves0))
    # float reassociation only: every leaf within 1e-5 of the whole gradient's norm (the slide
    # encoder's own gradients are ~1e-6 of it, so a relative test per leaf would test noise)
    for a, c in zip(leaves0, leaves1):
        assert np.linalg.norm(c - a) <= 1e-5 * total


def test_blocked_prefill_samples_the_same_tokens():
    one, blocked = _pair()
    b = tiny_batch(text=23)
    outs = [sample(m, jnp.asarray(b["ids"]), jnp.asarray(b["text_valid"]), jnp.asarray(b["features"]),
                   jnp.asarray(b["patch_valid"]), jax.random.key(0),
                   params=SamplingParams(max_new_tokens=6, greedy=True, group_size=2, shared_prefix=sp),
                   eos_id=1, pad_id=0)["tokens"] for m in (one, blocked) for sp in (True, False)]
    for o in outs[1:]:
        np.testing.assert_array_equal(np.asarray(o), np.asarray(outs[0]))
