"""The shared-prefix layout of GRPO's training passes (each prompt run once, its G
completions over its KV) against the G-full-rows layout it replaced, on a fixed batch of
completions: the same log-probs, and under SGD the same loss, gradient norm and updated
parameters — with LoRA, micro-batches that split prompts, a KL term, and remat; for the
slide model and for Qwen2.5-VL's M-RoPE positions."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pathreasoner_jax.config import GRPOConfig, SFTConfig
from pathreasoner_jax.grpo.step import assemble, make_grpo_step
from pathreasoner_jax.sharding import make_mesh
from pathreasoner_jax.train.params import trainable_filter
from test_grpo_learning import IMAGE, _model, _prompts


def _completions(rows: int, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    mask = np.arange(n)[None] < rng.integers(2, n + 1, (rows, 1))
    return {"tokens": jnp.asarray(np.where(mask, rng.integers(10, 40, (rows, n)), 0), jnp.int32),
            "mask": jnp.asarray(mask)}


def _both_layouts(model, prompts, g, n, is_trainable, micro, image_id):
    cfg = GRPOConfig(group_size=g, max_new_tokens=n, temperature=0.8, inner_epochs=1, kl_mode="loss", kl_beta=0.1,
                     micro_batches=micro)
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    step, t, f, o, ref = make_grpo_step(model, cfg, is_trainable, mesh, True)
    step = dataclasses.replace(step, tx=optax.sgd(1.0))  # new params = params − gradient
    o = step.tx.init(t)
    roll = _completions(prompts["ids"].shape[0] * g, n)
    adv = jnp.asarray(np.random.default_rng(0).standard_normal(roll["mask"].shape[0]), jnp.float32)
    out = {}
    # jitted: the eager op-by-op path is slow (and once aborted a CI worker inside XLA dispatch)
    logprobs = jax.jit(lambda t, f, seq: step.logprobs(t, f, seq, None))
    ref_logprobs = jax.jit(step.ref_logprobs)
    update = jax.jit(lambda t, f, o, seq, old, refp, adv: step.update(t, f, o, seq, old, refp, adv, None))
    for shared in (False, True):
        seq = assemble(prompts, roll, g, image_id, shared_prefix=shared)
        old = logprobs(t, f, seq)
        refp = ref_logprobs(ref, f, seq)
        new_t, _, m = update(t, f, o, seq, old, refp, adv)
        out[shared] = (np.asarray(old), np.asarray(refp), m, new_t)
    return out, np.asarray(roll["mask"])


def _assert_same(out, mask):
    (lp0, ref0, m0, t0), (lp1, ref1, m1, t1) = out[False], out[True]
    np.testing.assert_allclose(lp1[mask], lp0[mask], atol=2e-5)
    np.testing.assert_allclose(ref1[mask], ref0[mask], atol=2e-5)
    for k in ("loss", "grad_norm", "kl"):
        assert abs(float(m1[k]) - float(m0[k])) <= 1e-6 * max(1.0, abs(float(m0[k]))), k
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(t0), jax.tree.leaves(t1))) <= 1e-6


@pytest.mark.parametrize("lora,micro,remat", [pytest.param(False, 1, False, marks=pytest.mark.slow), (True, 2, True)],
                         ids=["full", "lora-micro2-remat"])
def test_slide_model_shared_prefix_equals_full_rows(lora, micro, remat):
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model = _model(mesh, lora=lora)
    if remat:
        model.llm.d = dataclasses.replace(model.llm.d, remat=True)
    filt = trainable_filter(SFTConfig(train_lora_only=lora), lora)
    out, mask = _both_layouts(model, _prompts(), 3, 8, filt, micro, IMAGE)
    _assert_same(out, mask)


def test_qwen_vl_shared_prefix_equals_full_rows():
    """M-RoPE: completions continue at the position after the image extents, in both layouts."""
    from test_vl_stages import IMAGE as VL_IMAGE, prompt_batch, tiny_vl
    from pathreasoner_jax.config import VLConfig
    from pathreasoner_jax.vl.stages import trainable_filter as vl_filter
    model = tiny_vl(seed=2)
    prompts = prompt_batch([0, 1, 1, 0], np.random.default_rng(3))
    out, mask = _both_layouts(model, prompts, 2, 6, vl_filter("vl_grpo", VLConfig(sft_freeze_vision=False)), 2,
                              VL_IMAGE)
    _assert_same(out, mask)
