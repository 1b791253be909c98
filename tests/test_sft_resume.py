"""CLI-level SFT/GRPO on a small prepared corpus: resume after SIGKILL, GRPO loads SFT, prior cache."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sft_fixtures import make_dataset, make_tokenizer, write_prep_dir

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = os.path.join(HERE, "demo_like.yaml")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    tok, _ = make_tokenizer(str(root / "tok"))
    train, slides = make_dataset(8, seed=0)
    test, test_slides = make_dataset(4, seed=3, split="test")
    slides.update(test_slides)
    write_prep_dir(str(root / "prep"), {"train": train, "test": test}, slides, str(root / "tok"))
    return str(root / "prep")


def _cli(args, root, prep, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "pathreasoner_jax", *args, "--config", CFG, f"run.root={root}",
           f"data.prep_dir={prep}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


def _losses(root, stage="sft"):
    with open(os.path.join(root, "t", "metrics", f"{stage}.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.mark.slow
def test_resume_after_sigkill_repeats_the_straight_run(corpus, tmp_path):
    steps = ["sft.max_steps=60", "sft.keep_last=100"]  # long enough that the kill lands mid-run
    straight = str(tmp_path / "straight")
    p = _cli(["sft", *steps], straight, corpus)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    ref = _losses(straight)
    assert sorted(ref) == list(range(1, 61))

    resumed = str(tmp_path / "resumed")
    p = _cli(["sft", *steps], resumed, corpus)
    ckpts = os.path.join(resumed, "t", "checkpoints", "sft")
    deadline = time.time() + 600
    while not (os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))):  # a finished checkpoint
        assert p.poll() is None and time.time() < deadline, p.stdout.read() if p.poll() is not None else "timeout"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(os.path.join(resumed, "t", "checkpoints", "sft", "DONE"))
    p = _cli(["sft", *steps], resumed, corpus)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert "resuming at step" in out, out
    got = _losses(resumed)
    assert sorted(got) == list(range(1, 61))
    for step in range(1, 61):
        assert abs(got[step] - ref[step]) <= 1e-6, (step, got[step], ref[step])
    # a finished stage is a quick no-op
    p = _cli(["sft", *steps], resumed, corpus)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0 and "already finished" in out and _losses(resumed) == got


@pytest.mark.slow
def test_grpo_starts_from_the_sft_weights_and_prior_cache_reads_back(corpus, tmp_path):
    import jax.numpy as jnp
    from flax import nnx
    from pathreasoner_jax.checkpoint import restore_params
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.runtime import setup
    from pathreasoner_jax.sft.prior import load_priors

    root = str(tmp_path / "run")
    for args in (["sft"], ["prior"], ["grpo"]):
        p = _cli(args, root, corpus)
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, (args, out)
    priors = load_priors(os.path.join(root, "t", "prior.npz"))
    assert priors and all(abs(v.sum() - 1) < 1e-9 and len(v) == 4 for v in priors.values())
    with np.load(os.path.join(root, "t", "prior.npz"), allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
    assert meta["mu"] == 0.7 and meta["slides"] == len(priors)

    rt = setup(load_config(CFG, [f"run.root={root}", f"data.prep_dir={corpus}"]))
    sft, other = rt.build_model(), rt.build_model(seed=123)
    restore_params(os.path.join(root, "t", "checkpoints", "sft"), sft)
    with open(os.path.join(root, "t", "checkpoints", "grpo", "DONE")) as f:
        assert json.load(f)["init_from"].endswith(os.path.join("checkpoints", "sft"))
    # GRPO started from the SFT weights (not from a fresh initialisation): 2 Adam steps at
    # lr 1e-3 move each weight by at most ~2e-3, while another initialisation differs by ~0.1
    grpo = rt.build_model()
    restore_params(os.path.join(root, "t", "checkpoints", "grpo"), grpo)
    a, b, c = (nnx.state(m, nnx.Param).to_pure_dict()["llm"]["embed_tokens"] for m in (sft, grpo, other))
    assert float(jnp.abs(b - a).max()) < 0.01 < float(jnp.abs(c - a).max())


@pytest.mark.slow
def test_grpo_resume_repeats_the_straight_run(corpus, tmp_path):
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.grpo.trainer import train_grpo
    from pathreasoner_jax.runtime import setup

    root = str(tmp_path / "run")
    p = _cli(["sft"], root, corpus)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out

    def grpo_losses(stop_after=None, force=False):
        rt = setup(load_config(CFG, [f"run.root={root}", f"data.prep_dir={corpus}", "grpo.steps=3"]))
        train_grpo(rt, force=force, stop_after=stop_after)
        with open(os.path.join(root, "t", "metrics", "grpo.jsonl")) as f:
            return {r["step"]: (r["loss"], r["reward"]) for r in map(json.loads, f)}

    straight = grpo_losses(force=True)
    grpo_losses(stop_after=1, force=True)  # stops after step 1 (checkpoint_every=1)
    resumed = grpo_losses()
    assert sorted(resumed) == [1, 2, 3]
    for step in (2, 3):
        assert np.allclose(resumed[step], straight[step], atol=1e-6), (step, resumed[step], straight[step])
