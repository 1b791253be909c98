"""Micro-batching is exact: SFT with grad_accum 2 and a GRPO update / log-prob pass with
micro_batches 2 (strided row splits, on a 2-device fsdp mesh) give the big batch's loss,
metrics, gradients and new params; the row split against a plain-Python twin."""
import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import optax

from pathreasoner_jax.config import GRPOConfig, SFTConfig
from pathreasoner_jax.grpo.step import make_grpo_step
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sft.step import make_sft_step
from pathreasoner_jax.sharding import make_mesh
from pathreasoner_jax.train.micro import merge_rows, split_rows
from pathreasoner_jax.train.params import trainable_filter

from tests.tiny_vlm import IMAGE_ID, tiny_batch, tiny_config


def test_split_rows_is_strided_and_merge_inverts_it():
    x = np.arange(12 * 2).reshape(12, 2)
    parts = np.asarray(split_rows(jnp.asarray(x), 3))
    expected = [[x[r] for r in range(i, 12, 3)] for i in range(3)]  # micro-batch i: rows i, i+3, ...
    np.testing.assert_array_equal(parts, np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(merge_rows(jnp.asarray(parts), 3)), x)


def _model(mesh):
    """The tiny VLM with dropout off: micro-batches draw other dropout keys than one big batch."""
    cfg = tiny_config(lora=False)
    cfg.slide = dataclasses.replace(cfg.slide, dropout=0.0, drop_path=0.0)
    return create_model(cfg, IMAGE_ID, mesh, seed=0)


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _close(a, b, rtol=2e-5, atol=1e-6):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(1, 2, 1, jax.devices()[:2])


def test_sft_grad_accum_equals_one_big_batch(mesh):
    cfg = SFTConfig(batch_size=4, train_lora_only=False, lr=1e-2)
    outs = []
    for accum in (1, 2):
        model = _model(mesh)
        step, t, f, o = make_sft_step(model, dataclasses.replace(cfg, grad_accum=accum), False, mesh, 10)
        batch = {k: jnp.asarray(v) for k, v in tiny_batch(batch=4).items()}
        loss, grads, ntok = jax.jit(step.loss_and_grads)(t, f, batch, jax.random.key(0))
        outs.append((loss, grads, ntok))
    assert float(outs[0][2]) == float(outs[1][2]) > 0
    np.testing.assert_allclose(float(outs[0][0]), float(outs[1][0]), rtol=1e-6)
    _close(outs[0][1], outs[1][1])


def _grpo_rows(n=8, prompt=20, new=6, seed=0):
    b = tiny_batch(batch=n, text=prompt + new, seed=seed)
    rng = np.random.default_rng(seed + 1)
    mask = np.ones((n, new), np.float32)
    mask[1, 3:] = 0.0  # an early-stopped completion
    mask[5, 1:] = 0.0
    seq = {"ids": b["ids"], "text_valid": b["text_valid"], "features": b["features"],
           "patch_valid": b["patch_valid"], "image_slots": b["ids"] == IMAGE_ID, "mask": mask}
    seq = {k: jnp.asarray(v) for k, v in seq.items()}
    adv = jnp.asarray(rng.standard_normal(n).astype(np.float32))
    return seq, adv


# token-mean is the case a mean of per-micro-batch means gets wrong (token counts differ)
@pytest.mark.parametrize("agg", ["token-mean", pytest.param("seq-mean-token-mean", marks=pytest.mark.slow)])
def test_grpo_micro_batches_equal_one_update(mesh, agg):
    seq, adv = _grpo_rows()
    results = []
    for micro in (1, 2):
        cfg = GRPOConfig(group_size=4, prompts_per_step=2, max_new_tokens=6, lr=1e-2, loss_agg=agg,
                         kl_mode="loss", micro_batches=micro)
        model = _model(mesh)
        step, t, f, o, ref = make_grpo_step(model, cfg, trainable_filter(SFTConfig(train_lora_only=False), False),
                                            mesh, False)
        # plain SGD at lr 1: new params = params − gradient, so the gradients are compared
        # (Adam's first step is ≈ −lr·sign(g) and flips on float noise where g ≈ 0)
        step = dataclasses.replace(step, tx=optax.sgd(1.0))
        o = step.tx.init(t)
        lp, ref_fn, upd = step.jit_all(t, f, o)
        old = lp(t, f, seq, None)
        # a stale policy: perturb the old log-probs so ratios differ from 1 and clipping acts
        old = old + 0.3 * jnp.sin(jnp.arange(old.size, dtype=jnp.float32).reshape(old.shape))
        ref_lp = ref_fn(ref, f, seq)
        new_t, _, m = upd(t, f, o, seq, old, ref_lp, adv, None)
        results.append((lp(ref, f, seq, None), ref_lp, new_t, m))
    (lp1, ref1, t1, m1), (lp2, ref2, t2, m2) = results
    np.testing.assert_allclose(np.asarray(lp1), np.asarray(lp2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ref1), np.asarray(ref2), rtol=1e-5, atol=1e-6)
    for k in ("loss", "grad_norm", "clip_ratio", "ratio_mean", "entropy", "n_tokens"):
        np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=2e-5, err_msg=k)
    assert float(m1["clip_ratio"]) > 0  # the perturbation makes clipping act
    assert float(m1["n_tokens"]) == float(seq["mask"].sum())
    _close(t1, t2, rtol=1e-4, atol=1e-6)
