"""LongNet dilated attention against independent references (SPEC §3)."""
import dataclasses
import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.config import SlideEncoderConfig
from pathreasoner_jax.models.layers import Ctx
from pathreasoner_jax.models.longnet import LongNet, dilated_attention


def plain_attention(q, k, v, valid):
    """Softmax attention over all valid keys, per batch and head (numpy)."""
    s = np.einsum("bqhd,bkhd->bhqk", q, k)
    s = np.where(valid[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def loop_dilated_attention(q, k, v, valid, segments, dilations):
    """SPEC §3 written out with loops over branches, segments, heads and positions."""
    b, n, h, d = q.shape
    outs, lses = [], []
    for w, r in zip(segments, dilations):
        seg = min(w, n)  # SPEC: the effective segment, not rounded to the dilation
        n_pad = math.ceil(n / seg) * seg
        group = math.ceil(h / r)
        out = np.zeros((b, n, h, d))
        lse = np.full((b, n, h), -np.inf)
        for bi in range(b):
            for hi in range(h):
                off = hi // group
                if off >= r:
                    continue
                for start in range(0, n_pad, seg):
                    kept = [p for p in range(start + off, start + seg, r) if p < n]
                    keys = [p for p in kept if valid[bi, p]]
                    if not keys:
                        continue
                    for p in kept:
                        scores = np.array([q[bi, p, hi] @ k[bi, kk, hi] for kk in keys])
                        m = scores.max()
                        e = np.exp(scores - m)
                        lse[bi, p, hi] = m + np.log(e.sum())
                        out[bi, p, hi] = (e / e.sum()) @ v[bi, keys, hi]
        outs.append(out)
        lses.append(lse)
    lses = np.stack(lses)
    top = np.max(lses, 0)
    top = np.where(np.isfinite(top), top, 0)
    wts = np.where(np.isfinite(lses), np.exp(lses - top), 0)
    den = wts.sum(0)
    wts = wts / np.where(den > 0, den, 1)
    return (wts[..., None] * np.stack(outs)).sum(0)


def _qkv(rng, b, n, h, d):
    return [rng.standard_normal((b, n, h, d)).astype(np.float32) for _ in range(3)]


def test_single_branch_short_sequence_is_plain_attention():
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 2, 9, 4, 8)
    valid = np.ones((2, 9), bool)
    valid[1, 6:] = False
    ours = np.asarray(dilated_attention(q, k, v, valid, [16], [1]))
    ref = plain_attention(q, k, v, valid)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-5)


@pytest.mark.parametrize("segments,dilations,heads", [
    ([4, 8], [1, 2], 4),
    ([4, 8, 16], [1, 2, 4], 4),
    ([3, 8, 16], [1, 4, 8], 4),  # dilation > heads: offsets ≥ H are covered by no head
    ([6], [4], 4),  # segment not a multiple of r, N > segment
    ([2, 6, 16], [1, 4, 4], 4),
])
def test_multi_branch_matches_loop_reference(segments, dilations, heads):
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 2, 13, heads, 4)
    valid = np.ones((2, 13), bool)
    valid[0, 10:] = False
    ours = np.asarray(dilated_attention(q, k, v, valid, segments, dilations))
    ref = loop_dilated_attention(q, k, v, valid, segments, dilations)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-5)


def _tiny_cfg():
    return dataclasses.replace(SlideEncoderConfig(), feature_dim=12, width=16, ffn_dim=32, num_heads=4,
                               segment_lengths=[4, 8], dilations=[1, 2])


def test_padded_patches_change_nothing_and_gradients_are_finite():
    model = LongNet(_tiny_cfg(), nnx.Rngs(0))
    rng = np.random.default_rng(2)
    real = rng.standard_normal((1, 7, 12)).astype(np.float32)
    junk = rng.standard_normal((1, 5, 12)).astype(np.float32) * 100
    padded = np.concatenate([real, junk], 1)
    forward = nnx.jit(lambda m, x, v: m(x, v, Ctx()))
    alone = forward(model, jnp.asarray(real), jnp.ones((1, 7), bool))
    with_pad = forward(model, jnp.asarray(padded), jnp.asarray(np.arange(12) < 7)[None])
    np.testing.assert_allclose(np.asarray(with_pad[:, :7]), np.asarray(alone), atol=1e-5)
    assert np.all(np.asarray(with_pad[:, 7:]) == 0)

    valid = jnp.asarray(np.arange(12) < 7)[None]

    def loss(m):
        return jnp.sum(m(jnp.asarray(padded), valid, Ctx(rng=jax.random.key(0))) ** 2)
    grads = nnx.jit(nnx.grad(loss))(model)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_merge_weights_carry_no_gradient():
    """SPEC §3: branch weights softmax(lse) are computed without gradient."""
    from pathreasoner_jax.models.dilated import merge_branches
    rng = np.random.default_rng(5)
    outs = [jnp.asarray(rng.standard_normal((1, 3, 2, 4)), jnp.float32) for _ in range(2)]
    lses = [jnp.asarray(rng.standard_normal((1, 3, 2)), jnp.float32) for _ in range(2)]
    g = jax.grad(lambda ls: merge_branches(outs, ls).sum())(lses)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in g)
    w0 = 1 / (1 + np.exp(np.asarray(lses[1]) - np.asarray(lses[0])))  # softmax over two branches by hand
    want = w0[..., None] * np.asarray(outs[0]) + (1 - w0[..., None]) * np.asarray(outs[1])
    np.testing.assert_allclose(np.asarray(merge_branches(outs, lses)), want, atol=1e-6)


def test_sub_ln_sits_between_attention_and_out_proj():
    """A LayerNorm before out_proj makes the attention block blind to the scale of the
    values: scaling v_proj by 3 leaves the block's output unchanged (it would triple without it)."""
    from pathreasoner_jax.models.longnet import LongNet
    from pathreasoner_jax.models.layers import Ctx
    cfg = _tiny_cfg()
    net = LongNet(cfg, nnx.Rngs(0))
    attn = net.layers[0].attn
    x = jnp.asarray(np.random.default_rng(6).standard_normal((1, 10, cfg.width)), jnp.float32)
    valid = jnp.ones((1, 10), bool)
    before = np.asarray(attn(x, valid, Ctx()))
    attn.v_proj.kernel[...] = attn.v_proj.kernel[...] * 3.0
    attn.v_proj.bias[...] = attn.v_proj.bias[...] + 0.5  # a shared offset of every value: also normalised away
    np.testing.assert_allclose(np.asarray(attn(x, valid, Ctx())), before, atol=1e-4)


def test_drop_path_drops_whole_rows_at_the_rate_and_rescales():
    from pathreasoner_jax.models.layers import Ctx
    from pathreasoner_jax.models.longnet import drop_path
    x = jnp.ones((4000, 3, 2))
    y = np.asarray(drop_path(x, 0.3, Ctx(rng=jax.random.key(0)), uid=1))
    dropped = (y == 0).all(axis=(1, 2))
    assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    np.testing.assert_allclose(y[~dropped], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(drop_path(x, 0.3, Ctx(), uid=1)), np.asarray(x))  # eval: identity
