"""Contrastive losses: the global-batch loss sharded over 8 devices equals one device's,
gradients included; both equal plain numpy formulas."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pathreasoner_jax.clip.loss import contrastive_loss
from pathreasoner_jax.sharding import make_mesh


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embeddings(b=16, e=8, seed=0):
    rng = np.random.default_rng(seed)
    img = _unit(rng.standard_normal((b, e)))
    txt = _unit(img + 0.7 * rng.standard_normal((b, e)))  # matched pairs are closer than chance
    return img.astype(np.float32), txt.astype(np.float32)


def _numpy_infonce(img, txt, scale):
    def ce(logits):  # mean over rows of −log softmax at the diagonal
        m = logits.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
        return np.mean(lse - np.diag(logits))
    logits = scale * img.astype(np.float64) @ txt.T.astype(np.float64)
    return 0.5 * (ce(logits) + ce(logits.T))


def _numpy_siglip(img, txt, scale, bias):
    logits = scale * img.astype(np.float64) @ txt.T.astype(np.float64) + bias
    z = 2 * np.eye(len(img)) - 1
    return np.sum(np.log1p(np.exp(-z * logits))) / len(img)


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_single_device_loss_equals_numpy(kind):
    img, txt = _embeddings()
    ls, lb = np.float32(np.log(12.0)), np.float32(-3.0)
    s, n = contrastive_loss(kind, jnp.asarray(img), jnp.asarray(txt), ls, lb if kind == "siglip" else None)
    want = _numpy_infonce(img, txt, 12.0) if kind == "infonce" else _numpy_siglip(img, txt, 12.0, -3.0)
    assert float(n) == 16
    np.testing.assert_allclose(float(s) / float(n), want, rtol=1e-6)


def test_logit_scale_is_clamped():
    img, txt = _embeddings()
    s, n = contrastive_loss("infonce", img, txt, np.float32(np.log(1000.0)), max_logit_scale=100.0)
    np.testing.assert_allclose(float(s) / float(n), _numpy_infonce(img, txt, 100.0), rtol=1e-6)


@pytest.mark.parametrize("kind,mesh_shape", [("infonce", (2, 4)), ("siglip", (1, 8)), ("infonce", (8, 1))])
def test_sharded_loss_and_gradient_equal_one_device(kind, mesh_shape):
    img, txt = _embeddings()
    ls, lb = jnp.float32(np.log(9.0)), jnp.float32(-2.0)
    bias = lb if kind == "siglip" else None

    def loss(mesh):
        def f(i, t, s, b):
            total, n = contrastive_loss(kind, i, t, s, b, mesh=mesh)
            return total / n
        return jax.value_and_grad(f, argnums=(0, 1, 2, 3) if bias is not None else (0, 1, 2))

    one_val, one_grads = jax.jit(loss(None))(img, txt, ls, bias)
    mesh = make_mesh(*mesh_shape, 1)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    i8, t8 = jax.device_put(img, rows), jax.device_put(txt, rows)
    val, grads = jax.jit(loss(mesh))(i8, t8, ls, bias)
    np.testing.assert_allclose(float(val), float(one_val), rtol=1e-6, atol=1e-6)
    for g, h in zip(grads, one_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(one_grads[0])).max() > 1e-3  # a gradient that could be wrong
