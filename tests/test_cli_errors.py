"""Expected failures of the CLI: one line naming the problem, exit code 2, no traceback."""
import os
import subprocess
import sys

import pytest

from sft_fixtures import make_dataset, make_tokenizer, write_prep_dir

CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_like.yaml")


def _run(*args, cwd=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.run([sys.executable, "-m", "pathreasoner_jax", *args], capture_output=True, text=True, env=env,
                       timeout=300, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def _one_line_error(rc, err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_tokenizer(str(root / "tok"))
    train, slides = make_dataset(4)
    write_prep_dir(str(root / "prep"), {"train": train, "test": train}, slides, str(root / "tok"))
    return str(root / "prep")


def test_infer_missing_slide_and_empty_question(tmp_path):
    rc, _, err = _run("infer", "--config", CFG, "--slide", str(tmp_path / "nope.svs"), "--question", "why?")
    _one_line_error(rc, err, "nope.svs", "does not exist")
    (tmp_path / "s.svs").write_bytes(b"x")
    rc, _, err = _run("infer", "--config", CFG, "--slide", str(tmp_path / "s.svs"), "--question", "  ")
    _one_line_error(rc, err, "question is empty")


def test_infer_corrupt_slide_and_missing_checkpoint(tmp_path, prep):
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(b"II*\x00" + os.urandom(2000))
    common = ["--config", CFG, f"run.root={tmp_path}", f"data.prep_dir={prep}"]
    rc, _, err = _run("infer", "--slide", str(bad), "--question", "what is it?", *common)
    _one_line_error(rc, err, "corrupt.svs")
    import h5py
    import numpy as np
    h5 = tmp_path / "feats.h5"
    with h5py.File(h5, "w") as f:
        f["features"] = np.zeros((5, 16), np.float32)
        f["coords"] = np.zeros((5, 2), np.int64)
    rc, _, err = _run("infer", "--slide", str(h5), "--question", "what is it?", *common)
    _one_line_error(rc, err, "checkpoint directory does not exist")


def test_unknown_config_key_and_missing_config(tmp_path):
    rc, _, err = _run("sft", "--config", CFG, "sft.nope=1")
    _one_line_error(rc, err, "sft.nope", "<command line>")
    rc, _, err = _run("grpo", "--config", str(tmp_path / "none.yaml"))
    _one_line_error(rc, err, "none.yaml", "not found")
