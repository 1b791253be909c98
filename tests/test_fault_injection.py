"""Fault injection end to end: SIGKILL in the middle of GRPO, whose rewards vary inside
every group (so the reward-weighted gradient is not zero), then a resume that must repeat
the straight run step for step.

The other injected faults live beside the code they exercise: a trickling server, a reply
cut short, an unreachable port, 500-then-ok and 400 (test_endpoint_client.py, and through
`prepare` in test_endpoint_prepare.py); corrupted, truncated and missing checkpoint files
and a torn metrics line (test_checkpoint_integrity.py, test_guard_nonfinite.py); lr 1e10
(test_guard_nonfinite.py); SIGKILL mid-SFT (test_sft_resume.py).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sft_fixtures import make_dataset, make_tokenizer, write_prep_dir

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = os.path.join(HERE, "demo_like.yaml")
STEPS = 6


def _worker(stage, root, prep, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, os.path.join(HERE, "grpo_worker.py"), stage, CFG, f"run.root={root}",
           f"data.prep_dir={prep}", f"grpo.steps={STEPS}", "grpo.keep_last=100", "grpo.group_size=4", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _run(*args):
    p = _worker(*args)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out
    return out


def _metrics(root):
    with open(os.path.join(root, "t", "metrics", "grpo.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


@pytest.mark.slow
def test_sigkill_mid_grpo_with_nonzero_rewards_resumes_to_the_straight_run(tmp_path):
    tok, _ = make_tokenizer(str(tmp_path / "tok"))
    train, slides = make_dataset(8, seed=0)
    prep = str(tmp_path / "prep")
    write_prep_dir(prep, {"train": train}, slides, str(tmp_path / "tok"))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    _run("sft", straight, prep)
    shutil.copytree(straight, killed)  # both GRPO runs start from the same SFT checkpoint

    _run("grpo", straight, prep)
    ref = _metrics(straight)
    assert sorted(ref) == list(range(1, STEPS + 1))
    # the rewards vary inside the groups, so the update is reward-weighted
    assert all(r["reward_std"] > 0 and r["frac_reward_zero_std"] < 1 for r in ref.values()), ref
    assert all(abs(r["grad_norm"]) > 0 for r in ref.values())

    p = _worker("grpo", killed, prep)
    ckpts = os.path.join(killed, "t", "checkpoints", "grpo")
    deadline = time.time() + 900
    while not (os.path.isdir(ckpts) and any(n.isdigit() and int(n) >= 2 for n in os.listdir(ckpts))):
        assert p.poll() is None and time.time() < deadline, p.stdout.read() if p.poll() is not None else "timeout"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(os.path.join(ckpts, "DONE"))
    out = _run("grpo", killed, prep)
    assert "resuming at step" in out, out
    got = _metrics(killed)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in ("loss", "grad_norm", "reward", "reward_std", "kl"):
            if key in ref[step]:
                assert np.isclose(got[step][key], ref[step][key], atol=1e-6), (step, key, got[step], ref[step])
    assert os.path.exists(os.path.join(ckpts, "DONE"))
