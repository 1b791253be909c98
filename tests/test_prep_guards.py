"""Bad numbers and bad inputs of data preparation stop early with one line naming the
problem: features arguments, an --out that is a file, a slide far below the target
magnification, a ragged PrimeKG row."""
from __future__ import annotations

import csv

import pytest

from data_prep.kg import PRIMEKG_COLUMNS, load_kg
from pathreasoner_jax import cli
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.slides.reader import SlideError, open_slide
from pathreasoner_jax.slides.tiling import plan_tiles
from test_prep_slides import known_slide, write_tiff


@pytest.mark.parametrize("args, message", [
    (["--patch-size", "0"], "argument --patch-size: must be >= 16, got 0"),
    (["--magnification", "-5"], "argument --magnification: must be > 0, got -5"),
    (["--num-workers", "x"], "argument --num-workers: 'x' is not an integer"),
])
def test_features_arguments_are_range_checked_at_parse(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["features", "--slides", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_features_out_that_is_a_file_fails_before_any_slide(tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    assert cli.main(["features", "--slides", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pathreasoner features: error: {out}: --out exists and is not a folder"]
    assert out.read_text() == "keep me"


def test_slide_far_below_target_magnification_is_refused(tmp_path):
    # mpp 8 µm/px is 1.25× (10/mpp): a 20× target would upsample 16×; 5× (4× upsampling) is still allowed
    path = write_tiff(tmp_path / "low.tiff", known_slide(), mpp=8.0, levels=1)
    s = open_slide(path)
    with pytest.raises(SlideError, match=r"scanned at 1\.25× \(mpp\), far below the target 20×; upsampling 16×"):
        plan_tiles(s, path, target_magnification=20, patch_size=64)
    plan = plan_tiles(s, path, target_magnification=5, patch_size=16, min_tissue=0.1)
    assert plan.patch_size_level0 == 4  # 16 px at 5× is 4 px of the 1.25× slide


def test_ragged_primekg_row_names_file_and_line(tmp_path):
    p = tmp_path / "kg.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PRIMEKG_COLUMNS)
        w.writerow(["r", "d", 1, "X1", "disease", "a", "M", 2, "Y2", "disease", "b", "H"])
        w.writerow(["r", "d", 3, "X3", "disease"])  # cut short
    with pytest.raises(UserError) as e:
        load_kg(str(p), "primekg")
    assert str(e.value) == f"{p}: line 3 has 5 fields where the header has 12"


def test_too_few_training_samples_is_one_line():
    from pathreasoner_jax.data.loader import SFTLoader

    class Empty(list):
        prep_dir, split = "/runs/x/prep", "train"
    with pytest.raises(UserError) as e:
        SFTLoader(Empty(), {}, None, batch_size=8, epochs=1, seed=0, length_buckets=[64], pad_id=0)
    assert str(e.value).startswith("/runs/x/prep (split 'train'): 0 training samples are fewer than one batch of 8")


def test_worker_split_comes_from_the_flags_then_the_job_environment(monkeypatch):
    from data_prep.cli import worker_from_env
    for k in ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_PROCID",
              "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID"):
        monkeypatch.delenv(k, raising=False)
    assert worker_from_env(None, None, -1) == (1, -1)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")
    monkeypatch.setenv("TPU_WORKER_ID", "2")
    assert worker_from_env(None, None, 0) == (4, 2)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert worker_from_env(None, None, 0) == (8, 5)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "16")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "11")
    assert worker_from_env(None, None, 0) == (16, 11)  # the array wins over its tasks
    assert worker_from_env(3, 1, 0) == (3, 1) and worker_from_env(3, None, -1) == (3, -1)  # flags win
