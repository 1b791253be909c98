"""benchmarks/readme_table.py: the newest *quiet* run of each row, rendered; loaded runs ignored."""
import json

from benchmarks.readme_table import END, START, main, newest_quiet, table


def _sft(path, created, quiet, ours_s, torch_s):
    rec = {"bench": "sft", "config_name": "demo", "created_utc": created, "machine_load": {"quiet": quiet},
           "shapes": {"batch": 8, "seq_len": 320, "patches": 256},
           "results": {"ours": {"median_s": ours_s, "tokens_per_s": 2560 / ours_s},
                       "torch": {"median_s": torch_s, "tokens_per_s": 2560 / torch_s}}}
    path.write_text(json.dumps(rec))


def test_newest_quiet_run_wins_and_loaded_runs_are_ignored(tmp_path):
    _sft(tmp_path / "cpu-sft-demo-1.json", "2026-12-01T00:00:00Z", True, 0.5, 0.4)
    _sft(tmp_path / "cpu-sft-demo-2.json", "2026-12-02T00:00:00Z", True, 0.25, 0.5)
    _sft(tmp_path / "cpu-sft-demo-3.json", "2026-12-03T00:00:00Z", False, 0.1, 1.0)  # loaded: not shown
    name, rec = newest_quiet(str(tmp_path), "sft", "demo")
    assert name == "cpu-sft-demo-2.json"
    text = table(str(tmp_path))
    assert "| 250 ms, 10240 tok/s | 500 ms, 5120 tok/s | 2.00× |" in text  # 0.5 s / 0.25 s
    assert "| rollout, `demo` | no quiet result yet |" in text


def test_write_replaces_only_the_block(tmp_path):
    _sft(tmp_path / "cpu-sft-demo-1.json", "2026-12-01T00:00:00Z", True, 0.5, 0.4)
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    assert main(["--results", str(tmp_path), "--write", str(doc)]) == 0
    out = doc.read_text()
    assert out.startswith("intro\n") and out.endswith("outro\n") and "old table" not in out and "0.80×" in out


def test_a_run_with_overrides_names_them(tmp_path):
    _sft(tmp_path / "cpu-sft-demo-1.json", "2026-12-01T00:00:00Z", True, 0.5, 0.4)
    rec = json.loads((tmp_path / "cpu-sft-demo-1.json").read_text())
    rec["overrides"] = ["bench.repeats=5", "model.attention_block=96"]
    (tmp_path / "cpu-sft-demo-1.json").write_text(json.dumps(rec))
    assert "`demo` with `model.attention_block=96`" in table(str(tmp_path))
