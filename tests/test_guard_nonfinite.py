"""The non-finite guard: a step with a non-finite loss, gradient, advantage or new param
leaves params and optimizer state exactly as they were and reports skipped=1; more than
max_nonfinite_steps in a row stop the stage with one line naming the stage, the step and
the last verified checkpoint; such a run is never marked done."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pathreasoner_jax.config import GRPOConfig, SFTConfig
from pathreasoner_jax.core.errors import ConfigError, UserError
from pathreasoner_jax.grpo.advantages import group_advantages
from pathreasoner_jax.sharding import make_mesh

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = os.path.join(HERE, "demo_like.yaml")
VOCAB = 64


def _host(tree):
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def _differs(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class _StubLLM(nnx.Module):
    def __init__(self, rngs):
        self.head = nnx.Linear(8, VOCAB, rngs=rngs)

    def logits(self, h):
        return self.head(h)


class Stub(nnx.Module):
    """The interface the SFT and GRPO steps use (`ctx`, `__call__`, `llm.logits`) in a model
    that compiles in a second: the steps' guard is what these tests are about."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.llm = _StubLLM(rngs)
        self.projector = nnx.Embed(VOCAB, 8, rngs=rngs)

    def ctx(self, rng=None, use_lora=True):
        return None

    def __call__(self, ids, text_valid, features, patch_valid, ctx, image_slots_bt=None):
        return self.projector(ids) + jnp.mean(features, axis=(1, 2))[:, None, None], None


def _stub_loss(model, batch, ctx):
    h, _ = model(batch["ids"], None, batch["features"], None, ctx)
    lp = jax.nn.log_softmax(model.llm.logits(h))
    nll = -jnp.take_along_axis(lp, batch["targets"][..., None], -1)[..., 0]
    return nll.sum(), jnp.float32(nll.size)


def _rows(n=8, t=6, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, VOCAB, (n, t)), jnp.int32),
            jnp.asarray(rng.standard_normal((n, 3, 4)), jnp.float32))


ALL = SFTConfig(lr=1e-2, warmup_ratio=0.0, train_lora_only=False)


def test_sft_step_skips_a_poisoned_batch_and_takes_a_clean_one():
    from pathreasoner_jax.sft.step import make_sft_step

    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    step, t, f, o = make_sft_step(Stub(), ALL, False, mesh, 10, loss_fn=_stub_loss)
    ids, feats = _rows()
    clean = {"ids": ids, "targets": jnp.roll(ids, 1, axis=1), "features": feats}
    poisoned = dict(clean, features=feats.at[0, 0, 0].set(jnp.nan))
    fn = step.jitted(t, f, o, clean)
    before_t, before_o = _host(t), _host(o)
    t, o, m = fn(t, f, o, poisoned, jax.random.key(0), jnp.int32(0))  # t, o donated: compare host copies
    assert float(m["skipped"]) == 1.0 and not np.isfinite(float(m["loss"]))
    _assert_same(_host(t), before_t)
    _assert_same(_host(o), before_o)  # Adam's moments and step count too
    t, o, m = fn(t, f, o, clean, jax.random.key(0), jnp.int32(0))
    assert float(m["skipped"]) == 0.0 and np.isfinite(float(m["loss"]))
    assert _differs(_host(t), before_t) and _differs(_host(o), before_o)
    # finite loss and gradients but an update that overflows the params: skipped as well
    step, t, f, o = make_sft_step(Stub(), dataclasses.replace(ALL, lr=float("inf")), False, mesh, 10,
                                  loss_fn=_stub_loss)
    before_t = _host(t)
    t, o, m = step.jitted(t, f, o, clean)(t, f, o, clean, jax.random.key(0), jnp.int32(0))
    assert np.isfinite(float(m["loss"])) and float(m["skipped"]) == 1.0
    _assert_same(_host(t), before_t)


def test_grpo_update_skips_non_finite_advantages():
    from pathreasoner_jax.grpo.step import make_grpo_step
    from pathreasoner_jax.train.params import trainable_filter

    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    cfg = GRPOConfig(group_size=2, max_new_tokens=4, lr=1e-2, kl_mode="loss")
    step, t, f, o, ref = make_grpo_step(Stub(), cfg, trainable_filter(ALL, False), mesh, False)
    ids, feats = _rows(t=10)
    seq = {"ids": ids, "image_slots": jnp.zeros_like(ids, bool), "text_valid": jnp.ones_like(ids, bool),
           "features": feats, "patch_valid": jnp.ones((8, 3), bool), "mask": jnp.ones((8, 4), jnp.float32)}
    _, _, upd = step.jit_all(t, f, o)
    old = refl = jnp.full((8, 4), -3.0)
    adv = jnp.asarray([1.0, -1.0] * 4)
    before_t, before_o = _host(t), _host(o)
    t, o, m = upd(t, f, o, seq, old, refl, adv.at[3].set(jnp.nan), None)
    assert float(m["skipped"]) == 1.0
    _assert_same(_host(t), before_t)
    _assert_same(_host(o), before_o)
    t, o, m = upd(t, f, o, seq, old, refl, adv, None)
    assert float(m["skipped"]) == 0.0 and _differs(_host(t), before_t)


def test_non_finite_rewards_take_their_group_out():
    from pathreasoner_jax.grpo.iteration import finite_group_advantages

    total = jnp.asarray([1.0, 0.0, jnp.nan, 1.0, 0.0, 2.0, 3.0, 3.0])
    t2, adv, n_flat, bad = finite_group_advantages(total, 2, "group")
    assert np.asarray(bad).tolist() == [False, False, True, True, False, False, False, False]
    good, _ = group_advantages(jnp.asarray([1.0, 0.0, 0.0, 2.0, 3.0, 3.0]), 2, "group")
    np.testing.assert_allclose(np.asarray(adv)[[0, 1, 4, 5, 6, 7]], np.asarray(good), rtol=1e-6)
    assert np.asarray(adv)[2:4].tolist() == [0.0, 0.0] and int(n_flat) == 1  # only the finite flat group
    _, adv, _, bad = finite_group_advantages(jnp.asarray([jnp.inf, 0.0, 1.0, jnp.nan]), 2, "group")
    assert np.asarray(bad).all() and np.isnan(np.asarray(adv)).all()  # nothing left: the update skips


class _FakeCk:
    directory = "/ck"

    def __init__(self, good):
        self.good, self.waited = good, 0

    def wait(self):
        self.waited += 1

    def latest_intact_step(self):
        return self.good


def test_guard_tolerates_the_limit_and_stops_one_past_it():
    from pathreasoner_jax.train.stage import NonFiniteGuard

    g = NonFiniteGuard("sft", "sft.max_nonfinite_steps", 2, _FakeCk(4), {})
    for step, skipped in enumerate([True, False, True, True], 1):
        g.update(skipped)
        g.check(step, last=False)  # never more than 2 in a row
    g.update(True)
    with pytest.raises(UserError) as e:
        g.check(5, last=False)
    msg = str(e.value)
    assert g.total == 4 and "\n" not in msg
    for needle in ("sft:", "step 5", "sft.max_nonfinite_steps=2", "last verified checkpoint: step 4 in /ck",
                   "not marked done"):
        assert needle in msg, msg
    g = NonFiniteGuard("grpo", "grpo.max_nonfinite_steps", 3, _FakeCk(None), {"skipped_steps": 2})
    g.update(True)
    with pytest.raises(UserError, match="grpo: .*step 7 .*last step was skipped.*no verified checkpoint in /ck"):
        g.check(7, last=True)  # the last step may not be a skipped one
    assert g.meta() == {"skipped_steps": 3, "nonfinite_streak": 1}
    g = NonFiniteGuard("sft", "k", 0, _FakeCk(None), {})
    g.update(False)
    g.check(1, last=True)
    g.update(True)
    with pytest.raises(UserError):
        g.check(2, last=False)  # 0: the first non-finite step stops the stage


def test_judge_failures_are_logged_when_the_reward_fn_counts_them():
    from pathreasoner_jax.grpo.trainer import judge_failures

    def reward_fn(*a):
        return {}
    assert judge_failures(reward_fn) == {}
    reward_fn.failure_counts = lambda: {"timeout": 2, "parse": 1}
    assert judge_failures(reward_fn) == {"judge/failures/parse": 1, "judge/failures/timeout": 2, "judge/failures": 3}


def test_max_nonfinite_steps_must_be_non_negative():
    from pathreasoner_jax.config import load_config

    assert load_config(CFG, ["sft.max_nonfinite_steps=0"]).sft.max_nonfinite_steps == 0
    for key in ("sft.max_nonfinite_steps", "grpo.max_nonfinite_steps"):
        with pytest.raises(ConfigError, match=key):
            load_config(CFG, [f"{key}=-1"])


# ------------------------------------------------------------------ whole stages (slow)
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from sft_fixtures import make_dataset, make_tokenizer, write_prep_dir

    root = tmp_path_factory.mktemp("corpus")
    make_tokenizer(str(root / "tok"))
    train, slides = make_dataset(8, seed=0)
    write_prep_dir(str(root / "prep"), {"train": train, "test": train}, slides, str(root / "tok"))
    return str(root / "prep")


def _params_of(ckpt_dir, step, rt):
    from flax import nnx
    from pathreasoner_jax.checkpoint import Checkpointer

    model = rt.build_model(seed=5)
    ck = Checkpointer(ckpt_dir)
    ck.restore(model, step=step)
    ck.close()
    return _host(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _all_finite(tree) -> bool:
    return all(np.isfinite(x).all() for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype, np.floating))


@pytest.mark.slow
def test_sft_at_lr_1e10_stops_with_one_line_and_no_done(corpus, tmp_path):
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.runtime import setup

    root = str(tmp_path / "run")
    over = [f"run.root={root}", f"data.prep_dir={corpus}", "sft.lr=1e10", "sft.max_steps=8",
            "sft.checkpoint_every=1", "sft.max_nonfinite_steps=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.run([sys.executable, "-m", "pathreasoner_jax", "sft", "--config", CFG, *over],
                       capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(lines) == 1, p.stderr
    with open(os.path.join(root, "t", "metrics", "sft.jsonl")) as f:
        rows = [json.loads(ln) for ln in f]
    # step 1 is finite (the huge update lands), every later step is not
    assert [r["skipped"] for r in rows] == [0.0, 1.0, 1.0, 1.0] and rows[-1]["skipped_steps"] == 3
    assert rows[0]["loss"] is not None and all(r["loss"] is None for r in rows[1:])
    for needle in ("sft:", "step 4", "sft.max_nonfinite_steps=2", "last verified checkpoint: step 3"):
        assert needle in lines[0], lines[0]
    ckpts = os.path.join(root, "t", "checkpoints", "sft")
    assert not os.path.exists(os.path.join(ckpts, "DONE"))
    assert sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) == [1, 2, 3]
    rt = setup(load_config(CFG, over))
    first = _params_of(ckpts, 1, rt)
    assert _all_finite(first)
    for s in (2, 3):  # the skipped steps left the params exactly as step 1 wrote them
        _assert_same(_params_of(ckpts, s, rt), first)


@pytest.mark.slow
def test_grpo_at_lr_1e10_skips_then_stops_and_no_done(corpus, tmp_path, monkeypatch):
    from pathreasoner_jax.checkpoint import Checkpointer
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.grpo import trainer
    from pathreasoner_jax.runtime import setup

    def reward_fn(rollout, prompts, group_size):  # varies within groups even for an untrained policy
        tok = jnp.where(rollout["mask"], rollout["tokens"], 0)
        return {"total": (jnp.sum(tok, axis=1) % 5).astype(jnp.float32)}
    reward_fn.failure_counts = lambda: {"timeout": 1}
    monkeypatch.setattr(trainer, "make_reward_fn", lambda *a, **k: reward_fn)

    root = str(tmp_path / "run")
    init = str(tmp_path / "init")
    over = [f"run.root={root}", f"data.prep_dir={corpus}", f"grpo.init_from={init}", "grpo.lr=1e10",
            "grpo.steps=6", "grpo.max_nonfinite_steps=1", "grpo.checkpoint_every=1"]
    rt = setup(load_config(CFG, over))
    start = rt.build_model()
    ck = Checkpointer(init, async_save=False)
    ck.save(0, start, meta={"step": 0})
    ck.close()
    with pytest.raises(UserError) as e:
        trainer.train_grpo(rt)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("grpo: non-finite") and "grpo.max_nonfinite_steps=1" in msg, msg
    with open(os.path.join(root, "t", "metrics", "grpo.jsonl")) as f:
        rows = [json.loads(ln) for ln in f]
    skipped = [r["skipped"] for r in rows]
    assert skipped[-2:] == [1.0, 1.0] and rows[-1]["skipped_steps"] == sum(skipped)
    assert rows[0]["judge/failures/timeout"] == 1 and rows[0]["judge/failures"] == 1
    assert f"step {len(rows)}" in msg, msg
    ckpts = os.path.join(root, "t", "checkpoints", "grpo")
    assert not os.path.exists(os.path.join(ckpts, "DONE"))
    saved = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
    assert saved == list(range(1, len(rows))) and f"last verified checkpoint: step {saved[-1]}" in msg
    last_good = max(i + 1 for i, s in enumerate(skipped) if s == 0.0) if 0.0 in skipped else None
    ref = _params_of(ckpts, last_good, rt) if last_good else _params_of(init, 0, rt)
    assert _all_finite(ref)
    _assert_same(_params_of(ckpts, saved[-1], rt), ref)  # skipped iterations changed nothing


@pytest.mark.slow
def test_sft_resumes_past_a_damaged_step_and_a_torn_metrics_line(corpus, tmp_path, capsys):
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.runtime import setup
    from pathreasoner_jax.sft.trainer import train_sft

    root = str(tmp_path / "run")
    over = [f"run.root={root}", f"data.prep_dir={corpus}", "sft.max_steps=4", "sft.checkpoint_every=1",
            "sft.keep_last=10"]
    train_sft(setup(load_config(CFG, over)), stop_after=3)
    ckpts = os.path.join(root, "t", "checkpoints", "sft")
    data = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(ckpts, "3", "params")) for n in ns]
    with open(max(data, key=os.path.getsize), "r+b") as f:
        f.seek(64)
        f.write(os.urandom(4096))
    metrics = os.path.join(root, "t", "metrics", "sft.jsonl")
    with open(metrics, "a") as f:
        f.write('{"step": 4, "lo')
    capsys.readouterr()
    train_sft(setup(load_config(CFG, over)))
    cap = capsys.readouterr()
    assert "resuming at step 2" in cap.out, cap.out
    assert "skipping step 3" in cap.err and "dropped 1 unreadable line" in cap.err, cap.err
    with open(metrics) as f:
        assert [json.loads(ln)["step"] for ln in f] == [1, 2, 3, 4]
    assert os.path.exists(os.path.join(ckpts, "DONE")) and os.path.isdir(os.path.join(ckpts, "3.corrupt"))
