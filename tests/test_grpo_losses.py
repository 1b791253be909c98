"""GRPO advantages and losses against hand-computed numbers (SPEC §6)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathreasoner_jax.grpo import advantages as A
from pathreasoner_jax.grpo import losses as L

# ------------------------------------------------------------------ advantages
R8 = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
CENTRED = np.array([-1.5, -0.5, 0.5, 1.5])


def test_group_advantages_unbiased_std_and_zero_variance():
    adv, n_zero = A.group_advantages(R8, 4, "group")
    s = math.sqrt((1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3)  # ddof=1: sqrt(5/3)
    np.testing.assert_allclose(np.asarray(adv), np.r_[CENTRED / (s + 1e-6), np.zeros(4)], rtol=1e-6)
    assert int(n_zero) == 1
    assert abs(float(adv[3]) - 1.5 / math.sqrt(1.25)) > 0.1  # not the ddof=0 value


def test_batch_and_no_scaling():
    adv, n_zero = A.group_advantages(R8, 4, "batch")
    s = math.sqrt(17.5 / 7)  # Σ(r − 3.75)² = 17.5 over 8 rewards, ddof=1
    np.testing.assert_allclose(np.asarray(adv), np.r_[CENTRED / (s + 1e-6), np.zeros(4)], rtol=1e-6)
    assert int(n_zero) == 1
    adv, _ = A.group_advantages(R8, 4, "none")
    np.testing.assert_allclose(np.asarray(adv), np.r_[CENTRED, np.zeros(4)], rtol=1e-7)
    # equal rewards give exactly 0 even where the float mean is off by rounding
    adv, n_zero = A.group_advantages(jnp.full(16, 0.1), 8, "none")
    assert np.all(np.asarray(adv) == 0.0) and int(n_zero) == 2
    with pytest.raises(ValueError):
        A.group_advantages(R8, 1)
    with pytest.raises(ValueError):
        A.group_advantages(R8, 4, "rank")


def test_dynamic_sampling_keep():
    keep = A.dynamic_sampling_keep(jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 1e-7]]))
    assert np.asarray(keep).tolist() == [False, True, False, True]


def test_kl_folded_into_reward_like_the_reference():
    r = jnp.array([1.0, 0.0])
    logp = jnp.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = jnp.array([[-1.5, -2.0, -2.0], [-1.0, -2.0, 50.0]])
    m = jnp.array([[1, 1, 1], [1, 1, 0]])
    # Σ (logp − ref): row 0: .5 + 0 − 1 = −.5; row 1: 0 + 1 = 1 (the masked 3rd token ignored)
    np.testing.assert_allclose(np.asarray(A.fold_kl_into_rewards(r, logp, ref, m, 0.05)), [1.025, -0.05], rtol=1e-6)
    tok = A.kl_token_rewards(r, logp, ref, m, 0.05)  # score on the last valid token
    np.testing.assert_allclose(np.asarray(tok), [[-0.025, 0.0, 1.05], [0.0, -0.05, 0.0]], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ losses
POLICY_LOSS = jax.jit(L.policy_loss, static_argnames=("clip_eps_low", "clip_eps_high", "agg", "max_len",
                                                      "kl_mode", "kl_beta"))
# B=2, T=3; ratios row 0 = [1, 1.5, .5] (A=+1), row 1 = [.7, 1.1, masked] (A=−2)
MASK = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
OLD = jnp.array([[-1.0, -2.0, -0.5], [-1.2, -0.3, -0.1]])
LOGP = OLD + jnp.log(jnp.array([[1.0, 1.5, 0.5], [0.7, 1.1, 1.0]])) + jnp.array([[0, 0, 0], [0, 0, 1000.0]])
ADV = jnp.array([1.0, -2.0])
# per token: row 0: −min(r, clip r) = [−1, −1.2, −.5] (sum −2.7); row 1: max(2r, 2 clip r) = [1.6, 2.2] (3.8)
# k3 with d = ref − logp: row 0 d = [0, ln2, −ln2] → [0, 2−ln2−1, .5+ln2−1]; row 1 d = [.1, −.1]
REF = LOGP + jnp.array([[0.0, math.log(2), -math.log(2)], [0.1, -0.1, -5000.0]])
K3 = [0.0, 1 - math.log(2), math.log(2) - 0.5, math.exp(0.1) - 1.1, math.exp(-0.1) - 0.9]
K3_ROW0, K3_ROW1 = sum(K3[:3]), sum(K3[3:])


def _loss(agg, **kw):
    s, d, m = POLICY_LOSS(LOGP, OLD, ADV, MASK, agg=agg, **kw)
    return float(s), float(d), float(s / d), m


@pytest.mark.parametrize("agg,want_sum,want_den", [
    ("seq-mean-token-mean", -2.7 / 3 + 3.8 / 2, 2.0),
    ("token-mean", -2.7 + 3.8, 5.0),
    ("seq-mean-token-sum-norm", (-2.7 + 3.8) / 4, 2.0),  # max_len 4
])
def test_aggregation_modes(agg, want_sum, want_den):
    s, d, loss, m = _loss(agg, max_len=4)
    assert abs(s - want_sum) < 1e-5 and d == want_den
    assert abs(m["clip_ratio_low"] - 0.2) < 1e-6 and abs(m["clip_ratio_high"] - 0.2) < 1e-6
    assert abs(m["clip_ratio"] - 0.4) < 1e-6 and float(m["n_tokens"]) == 5


def test_clip_higher():
    s, d, _, m = _loss("token-mean", clip_eps_high=0.28)
    assert abs(s - (-1 - 1.28 - 0.5 + 3.8)) < 1e-5  # 1.5 is clipped at 1.28 instead of 1.2
    assert abs(m["clip_ratio_high"] - 0.2) < 1e-6


def test_kl_loss_mode_k3():
    _, _, loss, m = _loss("token-mean", ref_logp_bt=REF, kl_mode="loss", kl_beta=0.04)
    assert abs(loss - (1.1 + 0.04 * (K3_ROW0 + K3_ROW1)) / 5) < 1e-6
    _, _, loss, _ = _loss("seq-mean-token-mean", ref_logp_bt=REF, kl_mode="loss", kl_beta=0.04)
    assert abs(loss - ((-2.7 + 0.04 * K3_ROW0) / 3 + (3.8 + 0.04 * K3_ROW1) / 2) / 2) < 1e-6
    assert abs(m["kl"] - sum(K3) / 5) < 1e-6
    # reward mode: the KL lives in the advantages; the loss adds nothing but reports it
    _, _, loss, m = _loss("seq-mean-token-mean", ref_logp_bt=REF, kl_mode="reward")
    assert abs(loss - 0.5) < 1e-6 and abs(m["kl"] - sum(K3) / 5) < 1e-6
    with pytest.raises(ValueError):
        _loss("token-mean", kl_mode="loss")


def test_k3_is_stable_and_masked_garbage_is_harmless():
    d = jnp.array([[1e-4, -1e-4, 3e-3, 0.5]])
    got = np.asarray(L.kl_k3(jnp.zeros((1, 4)), d, jnp.ones((1, 4))))[0]
    want = [math.exp(x) - x - 1 for x in [1e-4, -1e-4, 3e-3, 0.5]]  # float64
    np.testing.assert_allclose(got, want, rtol=1e-5)
    naive = np.asarray(jnp.exp(d) - d - 1.0)[0, 0]
    assert abs(naive - want[0]) / want[0] > 0.01  # float32 exp − d − 1 would be wrong here

    def f(logp):
        s, n, _ = L.policy_loss(logp, OLD, ADV, MASK, ref_logp_bt=REF, kl_mode="loss", agg="token-mean")
        return s / n
    g = jax.jit(jax.grad(f))(LOGP.at[1, 2].set(-1e30))
    assert np.all(np.isfinite(np.asarray(g))) and float(g[1, 2]) == 0.0


@pytest.mark.parametrize("agg", sorted(L.AGGREGATIONS))
def test_first_step_ratio_one_and_exact_accumulation(agg):
    rng = np.random.default_rng(0)
    b, t = 8, 6
    logp = jnp.asarray(rng.normal(size=(b, t)) - 2, jnp.float32)
    adv = jnp.asarray(rng.normal(size=b), jnp.float32)
    n = rng.integers(1, t + 1, b)
    mask = jnp.asarray(np.arange(t) < n[:, None], jnp.float32)
    s, d, m = POLICY_LOSS(logp, logp, adv, mask, agg=agg, max_len=t)
    want = {"seq-mean-token-mean": -float(adv.mean()),
            "token-mean": -float((adv * n).sum() / n.sum()),
            "seq-mean-token-sum-norm": -float((adv * n).sum() / (t * b))}[agg]
    assert abs(float(s / d) - want) < 1e-6 and float(m["ratio_mean"]) == 1.0
    # micro-batches: add sums and denominators → the full-batch loss
    parts = [POLICY_LOSS(logp[i:i + 3], logp[i:i + 3], adv[i:i + 3], mask[i:i + 3], agg=agg, max_len=t)
             for i in range(0, b, 3)]
    assert abs(sum(float(p[0]) for p in parts) / sum(float(p[1]) for p in parts) - float(s / d)) < 1e-6


def test_logprobs_and_entropy_helpers():
    logits = jnp.log(jnp.array([[[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]]))
    lp = L.token_logprobs(logits, jnp.array([[2, 0]]))
    np.testing.assert_allclose(np.asarray(lp), [[math.log(0.25), math.log(0.7)]], rtol=1e-6)
    ent = L.token_entropy(logits)
    np.testing.assert_allclose(np.asarray(ent), [[math.log(4), -(0.7 * math.log(0.7) + 0.3 * math.log(0.1))]],
                               rtol=1e-6)
    _, _, m = L.policy_loss(lp, lp, jnp.array([1.0]), jnp.ones((1, 2)), logits_btv=logits)
    assert abs(float(m["entropy"]) - float(ent.mean())) < 1e-6


# ------------------------------------------------------------------ DAPO length handling
def test_overlong_penalty():
    got = L.overlong_penalty(jnp.array([5, 6, 7, 8, 10]), max_len=10, buffer=4, penalty=1.0)
    np.testing.assert_allclose(np.asarray(got), [0.0, 0.0, -0.25, -0.5, -1.0])
    got = L.overlong_penalty(jnp.array([9]), max_len=10, buffer=4, penalty=0.5)
    assert abs(float(got[0]) + 0.375) < 1e-7
    assert np.all(np.asarray(L.overlong_penalty(jnp.array([10]), 10, 0)) == 0)


def test_truncated_completion_mask():
    eos = 2
    ids = jnp.array([[5, 6, 2, 0], [5, 6, 7, 8], [5, 6, 7, 2]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])  # row 2: EOS past the budget
    tr = L.is_truncated(ids, mask, eos)
    assert np.asarray(tr).tolist() == [False, True, True]
    np.testing.assert_array_equal(np.asarray(L.mask_truncated(mask, tr)), [[1, 1, 1, 0], [0] * 4, [0] * 4])
    np.testing.assert_array_equal(np.asarray(L.completion_lengths(mask)), [3, 4, 3])
