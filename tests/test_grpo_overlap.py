"""GRPO's host reward work overlaps the device: without dynamic sampling the log-prob passes
are dispatched before the reward function runs (they need no rewards), and nothing waits
on them in between; with dynamic sampling the rewards choose the groups first. The passes
and the update are recording fakes, so this checks the orchestration alone (the losses
themselves are checked against NumPy in test_grpo_dapo and test_grpo_learning)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathreasoner_jax.config import GRPOConfig
from pathreasoner_jax.grpo import iteration as I
from test_grpo_learning import IDS

B, G, N = 2, 4, 6


def _prompts(_try):
    return {"ids": jnp.ones((B, 8), jnp.int32), "text_valid": jnp.ones((B, 8), bool),
            "features": jnp.zeros((B, 3, 4)), "patch_valid": jnp.ones((B, 3), bool)}


def _rollout(*_args):
    tokens = jnp.asarray(np.arange(B * G * N).reshape(B * G, N) % 11, jnp.int32)
    return {"tokens": tokens, "mask": jnp.ones((B * G, N), bool), "lengths": jnp.full((B * G,), N),
            "truncated": jnp.zeros((B * G,), bool), "logprobs": jnp.zeros((B * G, N))}


def _run(monkeypatch, cfg):
    calls = []
    monkeypatch.setattr(I, "_rollout", _rollout)
    monkeypatch.setattr(I, "assemble", lambda prompts, roll, g, image, shared: {"mask": roll["mask"].astype(float)})

    def logprobs(*_a):
        calls.append("old")
        return jnp.full((B * G, N), -1.0)

    def ref(*_a):
        calls.append("ref")
        return jnp.full((B * G, N), -1.5)

    def update(trainable, frozen, opt, seq, *rest):
        calls.append("update")
        return trainable, opt, {"loss": jnp.float32(0), "skipped": jnp.float32(0)}

    def reward_fn(rollout, prompts, g):
        calls.append("reward")
        r = np.asarray(rollout["tokens"]).sum(1) % 3  # varies inside each group
        return {"total": jnp.asarray(r, jnp.float32)}

    state = I.GRPOState(trainable={}, frozen={}, opt_state={}, ref_trainable={},
                        jitted=(logprobs, ref, update, update))
    I.grpo_iteration(None, state, _prompts, reward_fn, jax.random.key(0), cfg, IDS)
    return calls


@pytest.mark.parametrize("inner,kl,order", [
    (1, "loss", ["ref", "reward", "update"]),  # μ = 1: the update's forward gives the old log-probs
    (2, "loss", ["old", "ref", "reward", "update", "update"]),
    (1, "reward", ["old", "ref", "reward", "update"]),  # the KL folded into the rewards
])
def test_log_prob_passes_are_dispatched_before_the_rewards(monkeypatch, inner, kl, order):
    cfg = GRPOConfig(group_size=G, max_new_tokens=N, inner_epochs=inner, kl_mode=kl, disable_dropout=True)
    assert _run(monkeypatch, cfg) == order


def test_dynamic_sampling_scores_before_the_passes(monkeypatch):
    cfg = GRPOConfig(group_size=G, max_new_tokens=N, inner_epochs=1, kl_mode="loss", disable_dropout=True,
                     dynamic_sampling=True)
    assert _run(monkeypatch, cfg) == ["reward", "ref", "update"]
