"""The faster SFT step against the implementation it replaced: `grouped_attention` equals
`jax.nn.dot_product_attention`'s XLA path (GQA, padded keys, a row with no valid key,
bf16), and the whole SFT step with rows flattened in `Linear` and grouped attention (in
query blocks and in one block) gives the same loss and, under SGD, the same updated
parameters as one with (B, T, in) matmuls and `jax.nn.dot_product_attention`."""
import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pathreasoner_jax.config import SFTConfig
from pathreasoner_jax.models import attention as A
from pathreasoner_jax.models import layers as L
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sharding import make_mesh
from pathreasoner_jax.sft.step import make_sft_step
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config


def _qkv(b, t, s, n, k, h, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (b, t, n, h), dtype), jax.random.normal(ks[1], (b, s, k, h), dtype),
            jax.random.normal(ks[2], (b, s, k, h), dtype))


def _mask(b, t, s):
    m = np.broadcast_to(np.tril(np.ones((t, s), bool), k=s - t), (b, 1, t, s)).copy()
    m[1, :, :, :3] = False  # left padding: row 1's first query slots see no key at all
    return jnp.asarray(m)


def _reference(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@pytest.mark.parametrize("n,k", [(8, 2), (4, 4)])
def test_grouped_attention_equals_jax_xla_path_with_gradients(n, k):
    q, kk, v = _qkv(2, 12, 12, n, k, 8)
    mask = _mask(2, 12, 12)
    np.testing.assert_allclose(A.grouped_attention(q, kk, v, mask), _reference(q, kk, v, mask), atol=1e-6)

    # A query with no valid key (a left-padding slot) carries no loss in the model and no
    # valid query attends to it, so its upstream gradient is 0 there; the additive mask
    # (unlike the reference's select) would pass a non-zero one on to q.
    live = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # (B,T,1,1)

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.where(live, jnp.sin(f(q, k, v, mask)), 0.0))
    g0 = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, kk, v)
    g1 = jax.grad(loss(A.grouped_attention), argnums=(0, 1, 2))(q, kk, v)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_grouped_attention_in_bf16_keeps_fp32_softmax():
    q, k, v = _qkv(2, 10, 16, 4, 2, 16, jnp.bfloat16)
    mask = _mask(2, 10, 16)
    out = A.grouped_attention(q, k, v, mask)
    assert out.dtype == jnp.bfloat16
    ref = _reference(q, k, v, mask)  # its logits and softmax are fp32 as well
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2)


def _previous_linear(self, x, ctx):
    dt = ctx.dtype
    y = jnp.dot(x.astype(dt), self.kernel[...].astype(dt))
    if self.bias is not None:
        y = y + self.bias[...].astype(dt)
    if self.lora_rank > 0 and ctx.use_lora:
        h = L.dropout(x.astype(dt), self.lora_dropout, ctx, self.uid)
        y = y + self.lora_scale * jnp.dot(jnp.dot(h, self.lora_a[...].astype(dt)), self.lora_b[...].astype(dt))
    return y


@contextlib.contextmanager
def _previous_implementation():
    saved = L.Linear.__call__, A.grouped_attention
    L.Linear.__call__, A.grouped_attention = _previous_linear, _reference
    try:
        yield
    finally:
        L.Linear.__call__, A.grouped_attention = saved


@pytest.mark.parametrize("block,lora", [(5, True), pytest.param(0, False, marks=pytest.mark.slow)])
def test_sft_step_equals_the_previous_implementation(block, lora):
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    cfg = dataclasses.replace(tiny_config(lora=lora), attention_block=block)
    batch = {k: jnp.asarray(v) for k, v in tiny_batch(text=23).items()}
    sft = SFTConfig(lr=1.0, warmup_ratio=0.0, train_lora_only=False)
    out = {}
    for name, ctx in (("previous", _previous_implementation), ("now", contextlib.nullcontext)):
        with ctx():
            step, t, f, _ = make_sft_step(create_model(cfg, IMAGE_ID, mesh), sft, lora, mesh, 10)
            step = dataclasses.replace(step, tx=optax.sgd(1.0))  # new params = params − gradient
            fn = jax.jit(step.step)
            t, _, m = fn(t, f, step.tx.init(t), batch, None, jnp.int32(0))
            out[name] = (float(m["loss"]), float(m["grad_norm"]), jax.tree.leaves(t))
    (l0, n0, p0), (l1, n1, p1) = out["previous"], out["now"]
    assert abs(l1 - l0) <= 1e-6 * max(1.0, abs(l0)) and abs(n1 - n0) <= 1e-6 * max(1.0, n0)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(p0, p1)) <= 1e-6


def test_two_models_built_alike_draw_the_same_dropout_masks():
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    b = {k: jnp.asarray(v) for k, v in tiny_batch(text=23).items()}
    outs = []
    for _ in range(2):  # the second build used to take later layer uids, hence other masks
        m = create_model(tiny_config(lora=True), IMAGE_ID, mesh)
        hidden, _ = nnx.jit(lambda m: m(b["ids"], b["text_valid"], b["features"], b["patch_valid"],
                                        m.ctx(rng=jax.random.key(3))))(m)
        outs.append(np.asarray(hidden))
    np.testing.assert_array_equal(outs[0], outs[1])
    deterministic = np.asarray(nnx.jit(lambda m: m(b["ids"], b["text_valid"], b["features"], b["patch_valid"],
                                                   m.ctx()))(m)[0])
    assert not np.allclose(outs[1], deterministic)  # dropout was on
