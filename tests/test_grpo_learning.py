"""GRPO end to end on a toy task: the reward is 1 when the completion contains token X."""
import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from pathreasoner_jax.config import GRPOConfig, LLMConfig, ModelConfig, SlideEncoderConfig
from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.grpo.iteration import GRPOState, grpo_iteration
from pathreasoner_jax.grpo.step import assemble, make_grpo_step
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.train.params import trainable_filter
from pathreasoner_jax.config import SFTConfig
from pathreasoner_jax.sharding import make_mesh
from pathreasoner_jax.tokenizer import SpecialIds

VOCAB, IMAGE, TARGET, EOS = 64, 3, 42, 1
IDS = SpecialIds(pad=0, eos=EOS, im_start=2, im_end=EOS, image=IMAGE, observe_open=4, observe_close=5,
                 think_open=6, think_close=7, answer_open=8, answer_close=9)


def _model(mesh, lora=False, lora_dropout=0.0):
    cfg = ModelConfig(llm=LLMConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2),
                      slide=dataclasses.replace(SlideEncoderConfig(), feature_dim=8, width=16, ffn_dim=32,
                                                num_heads=2, segment_lengths=[4, 8], dilations=[1, 2],
                                                dropout=0.0, drop_path=0.0),
                      compute_dtype="float32")
    cfg.lora = dataclasses.replace(cfg.lora, enabled=lora, rank=4, alpha=8.0, dropout=lora_dropout)
    return create_model(cfg, IMAGE, mesh, seed=0)


def _prompts(n=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, VOCAB, size=(n, 10)).astype(np.int32)
    ids[:, 1:4] = IMAGE
    valid = np.ones((n, 10), bool)
    valid[1, :2] = False  # a left-padded prompt
    return {"ids": jnp.asarray(ids), "text_valid": jnp.asarray(valid),
            "features": jnp.asarray(rng.standard_normal((n, 3, 8)).astype(np.float32)),
            "patch_valid": jnp.ones((n, 3), bool)}


def contains_target(rollout, prompts, group_size):
    hit = jnp.any((rollout["tokens"] == TARGET) & rollout["mask"], axis=1).astype(jnp.float32)
    return {"total": hit, "contains": hit}


def test_sampler_logprobs_equal_trainer_recomputation():
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model = _model(mesh)
    cfg = GRPOConfig(group_size=3, max_new_tokens=8, temperature=0.7)
    step, t, f, o, ref = make_grpo_step(model, cfg, trainable_filter(SFTConfig(train_lora_only=False), False),
                                        mesh, False)
    prompts = _prompts()
    out = sample(model, prompts["ids"], prompts["text_valid"], prompts["features"], prompts["patch_valid"],
                 jax.random.key(0), params=SamplingParams(max_new_tokens=8, temperature=0.7, group_size=3),
                 eos_id=EOS, pad_id=0)
    seq = assemble(prompts, out, 3, IMAGE)
    recomputed = step.logprobs(t, f, seq, None)
    m = np.asarray(out["mask"])
    np.testing.assert_allclose(np.asarray(recomputed)[m], np.asarray(out["logprobs"])[m], atol=1e-5)


# token-mean is the slow variant: the same loop, and the aggregation itself is checked
# exactly in test_grpo_losses.py
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", pytest.param("token-mean", marks=pytest.mark.slow)])
def test_grpo_raises_a_programmatic_reward(agg):
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model = _model(mesh)
    cfg = GRPOConfig(group_size=8, prompts_per_step=4, max_new_tokens=8, lr=3e-3, inner_epochs=2,
                     kl_mode="none", loss_agg=agg, clip_eps_high=0.28 if agg == "token-mean" else 0.2)
    step, t, f, o, ref = make_grpo_step(model, cfg, trainable_filter(SFTConfig(train_lora_only=False), False),
                                        mesh, False)
    state = GRPOState(t, f, o, ref)
    means = []
    for k in range(40):
        state, m = grpo_iteration(step, state, lambda i, k=k: _prompts(seed=k * 7 + i), contains_target,
                                  jax.random.key(k), cfg, IDS)
        means.append(m["reward"])
        if k >= 5 and np.mean(means[-3:]) > 0.9:
            break
    assert np.mean(means[:2]) < 0.2, means
    assert np.mean(means[-3:]) > 0.8, means
