"""Sampler: shared prefix = per-completion prefill, top-k/top-p, the slide reaches rollouts,
and GRPO's first ratio is exactly 1 even with dropout on."""
import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from pathreasoner_jax.config import GRPOConfig, SFTConfig
from pathreasoner_jax.generate import SamplingParams, filter_logits, sample
from pathreasoner_jax.grpo.iteration import GRPOState, grpo_iteration
from pathreasoner_jax.grpo.step import make_grpo_step
from pathreasoner_jax.train.params import trainable_filter
from pathreasoner_jax.sharding import make_mesh
from test_grpo_learning import EOS, IDS, _model, _prompts, contains_target


def _mesh():
    return make_mesh(1, 1, 1, jax.devices()[:1])


def test_shared_prefix_equals_per_completion_prefill():
    model = _model(_mesh())
    p = _prompts()
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=20, group_size=4)
    args = (p["ids"], p["text_valid"], p["features"], p["patch_valid"], jax.random.key(3))
    a = sample(model, *args, params=params, eos_id=EOS, pad_id=0)
    b = sample(model, *args, params=dataclasses.replace(params, shared_prefix=False), eos_id=EOS, pad_id=0)
    np.testing.assert_array_equal(np.asarray(a["tokens"]), np.asarray(b["tokens"]))
    np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
    np.testing.assert_allclose(np.asarray(a["logprobs"]), np.asarray(b["logprobs"]), atol=1e-5)
    # the mask runs up to and including the first EOS, never past it
    for row, m in zip(np.asarray(a["tokens"]), np.asarray(a["mask"])):
        eos = np.flatnonzero(row == EOS)
        want = len(row) if len(eos) == 0 else eos[0] + 1
        assert m.sum() == want and m[:want].all()


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda out: np.isfinite(np.asarray(out))[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, 2, 1.0)) == [True, True, False, False, False]
    # smallest set with mass ≥ 0.8: 0.5 + 0.2 + 0.15
    assert keep(filter_logits(logits, 0, 0.8)) == [True, True, True, False, False]
    assert keep(filter_logits(logits, 0, 0.3)) == [True, False, False, False, False]


def test_the_slide_reaches_the_rollout():
    model = _model(_mesh())
    p = _prompts()
    params = SamplingParams(max_new_tokens=4, greedy=True)
    a = sample(model, p["ids"], p["text_valid"], p["features"], p["patch_valid"], None, params=params,
               eos_id=EOS, pad_id=0)
    b = sample(model, p["ids"], p["text_valid"], p["features"] * -3.0, p["patch_valid"], None, params=params,
               eos_id=EOS, pad_id=0)
    assert np.abs(np.asarray(a["logprobs"]) - np.asarray(b["logprobs"])).max() > 1e-4


@pytest.mark.slow  # ~40 s, for the suite budget; the default run keeps the ratio-1 check without dropout (test_grpo_onpolicy)
def test_first_inner_epoch_ratio_is_one_with_dropout():
    model = _model(_mesh(), lora=True, lora_dropout=0.5)
    cfg = GRPOConfig(group_size=4, prompts_per_step=4, max_new_tokens=6, inner_epochs=2, kl_mode="loss", lr=1e-2,
                     disable_dropout=False)
    step, t, f, o, ref = make_grpo_step(model, cfg, trainable_filter(SFTConfig(), True), _mesh(), True)
    state, m = grpo_iteration(step, GRPOState(t, f, o, ref), lambda i: _prompts(seed=i), contains_target,
                              jax.random.key(0), cfg, IDS)
    assert m["first_epoch/ratio_mean"] == 1.0 and m["first_epoch/clip_ratio/region_mean"] == 0.0
    assert abs(m["first_epoch/kl"]) < 1e-6  # the reference is the starting policy
    # dropout is really on: two passes with different keys disagree
    from pathreasoner_jax.grpo.step import assemble
    from flax import nnx
    p = _prompts()
    t = state.trainable  # the update donated the original buffers
    out = sample(nnx.merge(step.graphdef, t, f), p["ids"], p["text_valid"], p["features"], p["patch_valid"],
                 jax.random.key(1), params=SamplingParams(max_new_tokens=6, group_size=4), eos_id=EOS, pad_id=0)
    seq = assemble(p, out, 4, IDS.image)
    lp = jax.jit(step.logprobs)
    l1, l2 = lp(t, f, seq, jax.random.key(5)), lp(t, f, seq, jax.random.key(6))
    assert float(jnp.abs(l1 - l2).max()) > 1e-4


def test_sampler_draws_the_same_tokens_with_the_context_axis():
    from pathreasoner_jax.sharding import use_mesh
    p = _prompts()
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=20, group_size=4)
    out = []
    for mesh in (make_mesh(1, 1, 1, devices=jax.devices()[:1]), make_mesh(1, 1, 1, devices=jax.devices()[:2],
                                                                         context=2)):
        with use_mesh(mesh):
            model = _model(mesh)
            out.append(sample(model, p["ids"], p["text_valid"], p["features"], p["patch_valid"], jax.random.key(3),
                              params=params, eos_id=EOS, pad_id=0))
    one, two = out
    np.testing.assert_array_equal(np.asarray(one["tokens"]), np.asarray(two["tokens"]))
    np.testing.assert_array_equal(np.asarray(one["mask"]), np.asarray(two["mask"]))
    np.testing.assert_allclose(np.asarray(one["logprobs"]), np.asarray(two["logprobs"]), atol=1e-5)
