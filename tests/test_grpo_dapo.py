"""DAPO's three pieces together in one GRPO iteration: dynamic-sampling refill (and the
top-up when the tries run out), the soft overlong penalty and truncation masking.

The expectation is computed here in NumPy from the rollouts the reward function saw:
which groups the update must use, their shaped rewards, group advantages and the
loss mask. At the first inner epoch the ratio is exactly 1, so the token-mean policy
loss is −Σᵢ Aᵢ·nᵢ / Σᵢ nᵢ (nᵢ: row i's unmasked completion tokens); a wrong selection,
a missing penalty or an unmasked truncated row changes it.
"""
import numpy as np

import jax

from pathreasoner_jax.config import GRPOConfig, SFTConfig
from pathreasoner_jax.grpo.iteration import GRPOState, grpo_iteration
from pathreasoner_jax.grpo.step import make_grpo_step
from pathreasoner_jax.sharding import make_mesh
from pathreasoner_jax.train.params import trainable_filter

from test_grpo_learning import IDS, _model, _prompts

G, B, MAX_NEW, BUFFER = 4, 4, 16, 14


def _reward_fn(varied: dict, seen: list):
    """Call t: the groups in varied[t] get distinct rewards, the others a constant 0.5."""
    def fn(rollout, prompts, group_size):
        t = len(seen)
        seen.append({k: np.asarray(v) for k, v in rollout.items()})
        n = rollout["tokens"].shape[0] // group_size
        r = np.full((n, group_size), 0.5, np.float32)
        for i in varied.get(t, ()):
            r[i] = (np.arange(group_size) % 2) + 0.25 * np.arange(group_size)
        total = jax.numpy.asarray(r.reshape(-1))
        return {"total": total, "task": total}
    return fn


def _expected_loss(seen: list, picks: list, raw: list) -> tuple[float, dict]:
    """picks: (call, group) in update order; raw: their (G,) raw rewards."""
    lengths, trunc, mask = [], [], []
    for t, i in picks:
        rows = slice(i * G, (i + 1) * G)
        lengths.append(seen[t]["lengths"][rows])
        trunc.append(seen[t]["truncated"][rows])
        mask.append(seen[t]["mask"][rows])
    lengths, trunc, mask = np.concatenate(lengths), np.concatenate(trunc), np.concatenate(mask)
    penalty = -np.clip((lengths - (MAX_NEW - BUFFER)) / BUFFER, 0.0, 1.0)
    shaped = (np.concatenate(raw) + penalty).reshape(-1, G).astype(np.float64)
    adv, flat = np.zeros_like(shaped), 0
    for k, r in enumerate(shaped):
        if np.all(r == r[0]):
            flat += 1
        else:
            adv[k] = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
    n = (mask & ~trunc[:, None]).sum(1)
    facts = {"truncated": int(trunc.sum()), "kept": int((~trunc).sum()),
             "partial_penalty": int(np.sum((penalty < 0) & (penalty > -1))), "flat_groups": flat}
    return float(-(adv.reshape(-1) * n).sum() / n.sum()), facts


def test_refill_overlong_and_truncation_reach_the_update():
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    cfg = GRPOConfig(group_size=G, prompts_per_step=B, max_new_tokens=MAX_NEW, temperature=3.0, lr=1e-3,
                     inner_epochs=1, kl_mode="none", loss_agg="token-mean", dynamic_sampling=True,
                     max_sampling_tries=2, overlong_buffer=BUFFER, overlong_penalty=1.0, mask_truncated=True)
    step, t, f, o, ref = make_grpo_step(_model(mesh), cfg,
                                        trainable_filter(SFTConfig(train_lora_only=False), False), mesh, False)
    state = GRPOState(t, f, o, ref)
    informative = (np.arange(G) % 2) + 0.25 * np.arange(G)
    flat = np.full(G, 0.5)
    for case in ("refill", "top_up"):  # one after the other: the second reuses the compiled steps
        # call 0: groups 2, 3 informative; call 1 (the refill): all of them, or only group 0
        varied = {0: (2, 3), 1: (0, 1, 2, 3) if case == "refill" else (0,)}
        seen: list = []
        state, m = grpo_iteration(step, state, lambda k, case=case: _prompts(n=B, seed=11 + k + 7 * (case != "refill")),
                                  _reward_fn(varied, seen), jax.random.key(5), cfg, IDS)
        if case == "refill":  # two groups from call 0, the first two informative ones of call 1
            picks, raw = [(0, 2), (0, 3), (1, 0), (1, 1)], [informative] * 4
        else:  # call 1 adds one group; the tries are spent: the first spare group (call 0's group 0) tops up
            picks, raw = [(0, 2), (0, 3), (1, 0), (0, 0)], [informative] * 3 + [flat]
        want, facts = _expected_loss(seen, picks, raw)
        assert len(seen) == 2 and m["sampling_tries"] == 2, case
        # zero variance is judged on the shaped rewards: a topped-up group of equal raw rewards
        # still has an advantage when its lengths differ
        assert m["frac_reward_zero_std"] == facts["flat_groups"] / B, case
        # the seed gives both truncated and finished rows, and penalties strictly inside (−1, 0)
        assert facts["truncated"] > 0 and facts["kept"] > 0 and facts["partial_penalty"] > 0, (case, facts)
        np.testing.assert_allclose(m["first_epoch/loss"], want, rtol=1e-4, atol=1e-6, err_msg=case)
