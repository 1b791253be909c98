"""Training curves from JSONL logs: groups found by key name, bad input tolerated."""
import json
import os

from PIL import Image

from pathreasoner_jax.eval.plots import collect_series, plot_training_curves


def write_jsonl(path, records, tail=""):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(tail)
    return str(path)


def test_groups_steps_and_bad_lines(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [
        {"step": 10, "loss": 2.0, "lr": 1e-5, "epoch": 0},
        {"step": 20, "loss": 1.5, "lr": 2e-5, "note": "text is skipped"},
        {"step": 30, "loss": float("nan")},          # non-finite: skipped
    ], tail='{"step": 40, "loss": 1.')             # a run killed mid-line
    grpo = write_jsonl(tmp_path / "grpo.jsonl", [
        {"reward/format": 0.5, "reward/entity": 0.1, "kl": 0.01, "completion_length": 120, "pg_loss": 0.3},
        {"reward/format": 0.7, "reward/entity": 0.2, "kl": 0.02, "completion_length": 100, "kl_loss": 0.1},
    ])
    series = collect_series([sft, grpo])
    assert series["loss"]["sft:loss"] == ([10, 20], [2.0, 1.5])
    assert series["lr"]["sft:lr"] == ([10, 20], [1e-5, 2e-5])
    assert series["rewards"]["grpo:reward/format"] == ([0, 1], [0.5, 0.7])  # no step key: line index
    assert set(series["kl"]) == {"grpo:kl", "grpo:kl_loss"}
    assert series["lengths"]["grpo:completion_length"] == ([0, 1], [120.0, 100.0])
    assert set(series["loss"]) == {"sft:loss", "grpo:pg_loss"}

    out = tmp_path / "plots"
    written = plot_training_curves(str(tmp_path), str(out))
    assert set(written) == {"loss", "lr", "rewards", "kl", "lengths"}
    for path in written.values():
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 100
    assert sorted(os.listdir(out)) == sorted(f"{k}.png" for k in written)


def test_trl_names_land_in_their_groups(tmp_path):
    log = write_jsonl(tmp_path / "grpo.jsonl", [
        {"step": 1, "loss": 0.1, "eval_loss": 0.2, "learning_rate": 1e-6, "grad_norm": 0.5, "tokens_per_s": 900.0,
         "reward": 1.0, "reward_std": 0.3, "rewards/format/mean": 1.0, "kl": 0.01,
         "completions/mean_length": 40.0, "completions/clipped_ratio": 0.25, "num_tokens": 123.0},
    ])
    groups = {g: set(v) for g, v in collect_series([log]).items()}
    assert groups == {"loss": {"loss", "eval_loss"}, "lr": {"learning_rate"}, "grad_norm": {"grad_norm"},
                      "throughput": {"tokens_per_s"}, "rewards": {"reward", "reward_std", "rewards/format/mean"},
                      "kl": {"kl"}, "lengths": {"completions/mean_length"}}


def test_empty_missing_and_partial_logs(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    assert plot_training_curves(empty, str(tmp_path / "p")) == {}
    assert plot_training_curves([str(tmp_path / "absent.jsonl")], str(tmp_path / "p")) == {}
    only_loss = write_jsonl(tmp_path / "l.jsonl", [{"loss": 1.0}, {"loss": 0.5}, ["not", "a", "dict"]])
    assert set(plot_training_curves(only_loss, str(tmp_path / "p"))) == {"loss"}
