"""Checkpoint integrity: every completed step gets a sha256 record; a damaged newest step
is skipped (warning) for the newest intact one; none intact, a model that does not fit and
non-finite params are one-line errors; a torn metrics line does not block a resume."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pathreasoner_jax.checkpoint import INTEGRITY, CheckpointError, Checkpointer, restore_params
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.metrics_log import MetricsLogger


class Net(nnx.Module):
    def __init__(self, seed: int, rows: int = 64):
        rng = np.random.default_rng(seed)  # incompressible values: the data file is tens of KB
        self.w = nnx.Param(jnp.asarray(rng.standard_normal((rows, 128)), jnp.float32))
        self.b = nnx.Param(jnp.asarray(rng.standard_normal(8), jnp.float32))


def _values(m: Net) -> dict:
    return {"w": np.asarray(m.w[...]), "b": np.asarray(m.b[...])}


@pytest.fixture
def two_steps(tmp_path):
    """Steps 1 and 2 with different weights (seeds 1, 2) and the values we saved."""
    d = str(tmp_path / "ck")
    ck = Checkpointer(d, keep_last=5)
    saved = {}
    for s in (1, 2):
        m = Net(seed=s)
        saved[s] = _values(m)
        ck.save(s, m, meta={"step": s})
    ck.close()
    return d, saved


def _largest_data_file(step_dir: str) -> str:
    files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "params")) for n in ns]
    path = max(files, key=os.path.getsize)
    assert os.path.getsize(path) > 8192, path  # the array data, not a small metadata file
    return path


def _assert_equal(m: Net, want: dict):
    got = _values(m)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_each_completed_step_has_a_record_of_every_file(two_steps):
    d, _ = two_steps
    for s in (1, 2):
        with open(os.path.join(d, str(s), INTEGRITY)) as f:
            rec = json.load(f)
        listed = set(rec["files"])
        on_disk = {os.path.relpath(os.path.join(r, n), os.path.join(d, str(s)))
                   for r, _, ns in os.walk(os.path.join(d, str(s))) for n in ns} - {INTEGRITY}
        assert listed == on_disk and rec["step"] == s
        import hashlib
        for rel, v in rec["files"].items():
            data = open(os.path.join(d, str(s), rel), "rb").read()
            assert v["bytes"] == len(data) and v["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("damage, reason", [("flip4k", "sha256"), ("truncate", "truncated"),
                                            ("delete", "missing")])
def test_damaged_newest_step_falls_back_to_the_previous(two_steps, capsys, damage, reason):
    d, saved = two_steps
    path = _largest_data_file(os.path.join(d, "2"))
    if damage == "flip4k":
        with open(path, "r+b") as f:
            f.seek(1024)
            old = f.read(4096)
            f.seek(1024)
            f.write(bytes(b ^ 0xFF for b in old))
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        os.remove(path)
    m = Net(seed=99)
    meta = restore_params(d, m)
    assert meta["step"] == 1
    _assert_equal(m, saved[1])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "step 2" in err[0] and reason in err[0], err
    ck = Checkpointer(d)
    assert ck.latest_step() == 1  # "latest" means the newest intact step
    ck.close()


def test_intact_newest_step_restores_it_and_explicit_damaged_step_is_an_error(two_steps):
    d, saved = two_steps
    m = Net(seed=99)
    assert restore_params(d, m)["step"] == 2
    _assert_equal(m, saved[2])
    with open(_largest_data_file(os.path.join(d, "1")), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 4096)
    ck = Checkpointer(d)
    with pytest.raises(CheckpointError, match="step 1 is damaged"):
        ck.restore(Net(seed=3), step=1)
    ck.close()


def test_all_damaged_is_one_line_error(two_steps):
    d, _ = two_steps
    for s in (1, 2):
        os.remove(_largest_data_file(os.path.join(d, str(s))))
    with pytest.raises(UserError) as e:
        restore_params(d, Net(seed=0))
    msg = str(e.value)
    assert "\n" not in msg and "no intact checkpoint" in msg and "step 1" in msg and "step 2" in msg, msg


def test_unrecorded_step_is_used_with_a_warning(two_steps, capsys):
    d, saved = two_steps
    os.remove(os.path.join(d, "2", INTEGRITY))
    m = Net(seed=99)
    assert restore_params(d, m)["step"] == 2
    _assert_equal(m, saved[2])
    err = capsys.readouterr().err
    assert "step 2 has no integrity.json" in err and len(err.strip().splitlines()) == 1, err


def test_unreadable_record_is_a_damaged_step(two_steps, capsys):
    d, saved = two_steps
    with open(os.path.join(d, "2", INTEGRITY), "w") as f:
        f.write('{"files": {"a": ')
    m = Net(seed=99)
    assert restore_params(d, m)["step"] == 1
    _assert_equal(m, saved[1])
    assert "integrity record unreadable" in capsys.readouterr().err


def test_resume_sets_damaged_steps_aside_and_saves_them_again(two_steps):
    d, saved = two_steps
    os.remove(_largest_data_file(os.path.join(d, "2")))
    m = Net(seed=99)
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    ck = Checkpointer(d, keep_last=5)
    params, rest, _, meta = ck.resume(graphdef, params, rest, None, nnx.Param)
    assert meta["step"] == 1 and os.path.isdir(os.path.join(d, "2.corrupt"))
    _assert_equal(nnx.merge(graphdef, params, rest), saved[1])
    again = Net(seed=7)
    ck.save(2, again, meta={"step": 2})  # step 2 can be written again
    ck.close()
    m2 = Net(seed=99)
    assert restore_params(d, m2)["step"] == 2
    _assert_equal(m2, _values(again))


def test_model_mismatch_is_one_readable_line(two_steps):
    d, _ = two_steps
    with pytest.raises(UserError) as e:
        restore_params(d, Net(seed=0, rows=32))
    msg = str(e.value)
    assert "\n" not in msg and "w has shape (64, 128) in the checkpoint, (32, 128) in the model" in msg, msg
    assert isinstance(e.value, ValueError)  # eval's final_model catches ValueError


def test_non_finite_params_are_never_saved(tmp_path):
    m = Net(seed=0)
    m.b[...] = m.b[...].at[3].set(jnp.nan)
    ck = Checkpointer(str(tmp_path / "ck"))
    with pytest.raises(CheckpointError, match="non-finite values in b"):
        ck.save(1, m, meta={"step": 1})
    ck.close()
    assert ck.latest_intact_step() is None


def test_torn_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    path = str(tmp_path / "m.jsonl")
    log = MetricsLogger(path)
    for s in (1, 2, 3):
        log.log(s, {"loss": 1.0 / s})
    with open(path, "a") as f:
        f.write('{"step": 4, "time": 1.0, "lo')  # a crash mid-write
    log.truncate_after(2)
    with open(path) as f:
        rows = [json.loads(ln) for ln in f]
    assert [r["step"] for r in rows] == [1, 2]
    assert "dropped 1 unreadable line(s) (line 4)" in capsys.readouterr().err
    log.log(3, {"loss": 0.5})  # the log goes on as one valid line per step
    with open(path) as f:
        assert [json.loads(ln)["step"] for ln in f] == [1, 2, 3]
