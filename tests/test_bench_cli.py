"""`pathreasoner bench` plumbing: timing protocol, batch layout, result file; one slow end-to-end run."""
import argparse
import json
import os
import re
import sys
import types

import numpy as np
import pytest

from benchmarks import cli as bench
from benchmarks import common as bench_common
from benchmarks.model import random_batch
from pathreasoner_jax.cli import UserError, build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_time_sides_warms_up_then_interleaves():
    calls = []
    sides = {"a": lambda i: calls.append(("a", i)) or i, "b": lambda i: calls.append(("b", i))}
    out = bench_common.time_sides(sides, warmup=2, repeats=3)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4), ("b", 4)]
    assert len(out["a"]["warmup_s"]) == 2 and len(out["a"]["times_s"]) == 3
    assert out["a"]["median_s"] == sorted(out["a"]["times_s"])[1] and out["a"]["first_result"] == 0


def test_random_batch_layout():
    b = random_batch(vocab=50, feature_dim=3, batch=2, seq=12, patches=5)
    assert (b["ids"][:, 4:9] == 49).all() and (b["ids"][:, :4] < 49).all() and (b["ids"][:, 9:] < 49).all()
    np.testing.assert_array_equal(b["targets"][:, :-1], b["ids"][:, 1:])
    np.testing.assert_array_equal(b["loss_weight"][0], [0] * 9 + [1, 1, 0])
    assert b["features"].shape == (2, 5, 3) and b["patch_valid"].all()
    with pytest.raises(ValueError, match="seq_len"):
        random_batch(vocab=50, feature_dim=3, batch=1, seq=10, patches=5)


def test_device_slug():
    assert bench_common.device_slug({"device_kind": "NVIDIA H100 80GB HBM3", "platform": "gpu",
                                     "device_count": 1}) == "nvidia-h100-80gb-hbm3"
    assert bench_common.device_slug({"device_kind": "TPU v5 lite", "platform": "tpu",
                                     "device_count": 8}) == "tpu-v5-lite-x8"


def test_bench_rewards_writes_result(tmp_path, monkeypatch):
    """The rewards bench is routed to `benchmarks.rewards` with the bench.* knobs and the seed,
    and the record lands atomically in <out>/<device>-rewards-<config>.json."""
    seen = {}

    def fake(batch_sizes=(64,), repeats=5, tok=None, seed=0):
        seen.update(batch_sizes=batch_sizes, repeats=repeats, seed=seed)
        return {"results": [{"batch": 8, "device_s": 0.001, "python_s": 0.01, "speedup": 10.0}]}
    monkeypatch.setitem(sys.modules, "benchmarks.rewards", types.SimpleNamespace(bench_rewards=fake))
    args = build_parser().parse_args(["bench", "rewards", "bench.rewards_batch_sizes=[8]", "bench.repeats=2", "run.seed=3",
                                      "--config", os.path.join(ROOT, "configs", "demo.yaml"), "--out", str(tmp_path)])
    assert bench.run_bench(args) == 0
    assert seen == {"batch_sizes": (8,), "repeats": 2, "seed": 3}
    files = os.listdir(tmp_path)
    slug = bench_common.device_slug(bench_common.device_info())  # "cpu-x8" under the tests' 8 CPU devices
    # a new timestamped file per run, and no temporary file left behind
    assert len(files) == 1 and re.fullmatch(rf"{slug}-rewards-demo-\d{{8}}T\d{{6}}Z\.json", files[0]), files
    rec = json.loads((tmp_path / files[0]).read_text())
    assert set(rec["machine_load"]) == {"before", "after", "quiet"}
    assert rec["machine_load"]["before"]["cpu_count"] == os.cpu_count()
    assert rec["bench"] == "rewards" and rec["results"][0]["speedup"] == 10.0
    assert rec["device"]["platform"] == "cpu" and rec["versions"]["jax"]
    assert rec["config"]["bench"]["rewards_batch_sizes"] == [8]


def test_missing_torch_baseline_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "benchmarks.torch_baseline.transfer", None)  # as if torch were absent
    with pytest.raises(UserError, match="requirements-dev.txt"):
        bench_common.import_torch_baseline()


def test_every_bench_choice_is_routed():
    choices = next(a for a in build_parser()._subparsers._group_actions[0].choices["bench"]._actions
                   if a.dest == "which").choices
    assert sorted(choices) == sorted(bench.BENCHES)


@pytest.mark.slow  # compiles a train step and runs both frameworks (~1 min on 2 shared cores)
def test_bench_sft_end_to_end_tiny(tmp_path):
    """Without dropout both sides start from the same weights and batch, so their first
    step's losses agree; the record has timings, throughput and the ratio."""
    overrides = ["model.llm.vocab_size=128", "model.llm.hidden_size=32", "model.llm.intermediate_size=64",
                 "model.llm.num_heads=2", "model.llm.num_kv_heads=1", "model.slide.width=32", "model.slide.ffn_dim=32",
                 "model.slide.num_heads=2", "model.slide.dropout=0.0", "model.slide.drop_path=0.0",
                 "bench.slide_tokens=16", "bench.seq_len=40", "bench.batch=8", "bench.warmup=1", "bench.repeats=2"]
    args = argparse.Namespace(which="sft", config=os.path.join(ROOT, "configs", "demo.yaml"), overrides=overrides,
                              baseline="torch", out=str(tmp_path))
    assert bench.run_bench(args) == 0
    (name,) = os.listdir(tmp_path)
    rec = json.loads((tmp_path / name).read_text())
    ours, theirs = rec["results"]["ours"], rec["results"]["torch"]
    assert abs(ours["first_result"] - theirs["first_result"]) < 1e-4
    assert len(ours["times_s"]) == 2 and ours["tokens_per_s"] == pytest.approx(8 * 40 / ours["median_s"])
    assert ours["speedup_vs_torch"] == pytest.approx(theirs["median_s"] / ours["median_s"])
    assert rec["flops_per_step"]["convention"] > 0 and ours["mfu"] is None  # CPU: no peak


def test_profile_runs_one_more_call_of_ours_under_the_profiler(tmp_path):
    calls = []
    sides = {"ours": lambda i: calls.append(("ours", i)), "torch": lambda i: calls.append(("torch", i))}
    bench_common.time_sides(sides, warmup=1, repeats=1, profile_dir=str(tmp_path / "trace"))
    assert calls[-1] == ("ours", 2) and len(calls) == 5
    assert any(f.endswith(".xplane.pb") for _, _, fs in os.walk(tmp_path / "trace") for f in fs)


def test_machine_load_names_a_busy_process_that_is_not_ours():
    """A CPU-bound process outside this process tree (double-forked, so not our child)
    shows up among the busiest others; spread() gives the quartiles by hand."""
    import subprocess
    import time
    spin = "sum(range(10 ** 9))"  # ~20 s of one core, then it ends by itself
    busy = subprocess.run([sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen([sys.executable, "
                           f"'-c', {spin!r}], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                           "print(p.pid)"],
                          capture_output=True, text=True, check=True)
    pid = int(busy.stdout.split()[-1])
    try:
        time.sleep(0.3)
        load = bench_common.machine_load(sample_s=1.0)
        assert pid in [b["pid"] for b in load["busiest_others"]], load
        assert load["other_cpu_percent"] >= 5.0
    finally:
        os.kill(pid, 9)
    s = bench_common.spread([1.0, 2.0, 3.0, 4.0])
    assert s == {"min_s": 1.0, "p25_s": 1.25, "p75_s": 3.75, "max_s": 4.0}
