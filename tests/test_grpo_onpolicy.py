"""μ = 1 without the old-log-prob pass: the update that takes its old log-probs from its
own forward (stop-gradient) gives the same loss, gradient norm and SGD-updated parameters
as the update fed recomputed old log-probs. (Under AdamW the parameters agree to ~1% of a
step only: its first step is lr·g/(|g| + 1e-8), which blows float noise in gradients of
size ~1e-10 up to full steps; SGD shows the gradients themselves agree.)"""
import dataclasses

import optax
import jax
import jax.numpy as jnp
import numpy as np

from pathreasoner_jax.config import GRPOConfig, SFTConfig
from pathreasoner_jax.grpo.step import assemble, make_grpo_step
from pathreasoner_jax.sharding import make_mesh
from pathreasoner_jax.train.params import trainable_filter
from test_grpo_learning import IMAGE, _model, _prompts


def test_on_policy_update_equals_the_update_with_recomputed_old_logprobs():
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model = _model(mesh)
    cfg = GRPOConfig(group_size=4, max_new_tokens=8, temperature=0.8, inner_epochs=1, kl_mode="loss", lr=1e-3)
    step, t, f, o, ref = make_grpo_step(model, cfg, trainable_filter(SFTConfig(train_lora_only=False), False),
                                        mesh, False)
    step = dataclasses.replace(step, tx=optax.sgd(1.0))  # new params = params − gradient
    o = step.tx.init(t)
    p = _prompts()
    rng = np.random.default_rng(1)  # a fixed batch of completions (no sampler to compile)
    mask = np.arange(8)[None] < rng.integers(3, 9, (16, 1))
    roll = {"tokens": jnp.asarray(np.where(mask, rng.integers(10, 40, (16, 8)), 0), jnp.int32),
            "mask": jnp.asarray(mask)}
    seq = assemble(p, roll, 4, IMAGE)
    adv = jnp.asarray(np.random.default_rng(0).standard_normal(seq["mask"].shape[0]), jnp.float32)
    lp, ref_fn, upd = step.jit_all(t, f, o)
    on_policy = step.jit_on_policy_update(t, f, o)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (the updates donate their inputs)
    t2, o2 = copy(t), copy(o)
    ref_logp = ref_fn(ref, f, seq)
    old = lp(t, f, seq, None)
    t_a, _, m_a = upd(t, f, o, seq, old, ref_logp, adv, None)
    t_b, _, m_b = on_policy(t2, f, o2, seq, ref_logp, adv, None)
    assert abs(float(m_a["loss"]) - float(m_b["loss"])) < 1e-6
    assert abs(float(m_a["grad_norm"]) - float(m_b["grad_norm"])) < 1e-6
    assert float(m_b["clip_ratio"]) == 0.0  # the ratio is exactly 1
    for a, b in zip(jax.tree.leaves(t_a), jax.tree.leaves(t_b)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
