"""The run directory's rules: stage paths, where stages start, the final checkpoint."""
from __future__ import annotations

import os

import pytest

from pathreasoner_jax.config import load_config
from pathreasoner_jax.run_layout import RunLayout


def _layout(tmp_path, *overrides):
    return RunLayout(load_config(None, [f"run.root={tmp_path}", "run.name=r", *overrides]))


def _finish(layout, stage):
    os.makedirs(layout.checkpoint(stage), exist_ok=True)
    layout.mark_done(stage, {"steps": 1})


def test_paths(tmp_path):
    lay = _layout(tmp_path)
    root = os.path.join(str(tmp_path), "r")
    assert lay.checkpoint("grpo") == os.path.join(root, "checkpoints", "grpo")
    assert lay.prep_dir == os.path.join(root, "prep")
    assert lay.tokenizer_dir == os.path.join(root, "prep", "tokenizer")
    assert lay.metrics("sft") == os.path.join(root, "metrics", "sft.jsonl")
    assert lay.prior_path == os.path.join(root, "prior.npz")
    assert _layout(tmp_path, "data.prep_dir=/p").tokenizer_dir == "/p/tokenizer"
    with pytest.raises(ValueError):
        lay.checkpoint("sft2")


def test_stage_starts_and_final_checkpoint(tmp_path):
    lay = _layout(tmp_path)
    pb = _layout(tmp_path, "sft.pseudo_bag=true")
    assert (lay.sft_stage, pb.sft_stage) == ("sft", "sft_pseudobag")
    assert lay.sft_init() == "" and pb.sft_init() == lay.checkpoint("sft")
    assert lay.final_checkpoint() == lay.checkpoint("sft") and lay.trained_checkpoints() == {}
    _finish(lay, "sft")
    assert lay.grpo_init() == lay.checkpoint("sft")
    os.makedirs(lay.checkpoint("sft_pseudobag"))  # started, not finished: not the last SFT
    assert lay.last_sft() == lay.checkpoint("sft")
    _finish(lay, "sft_pseudobag")
    assert lay.grpo_init() == lay.checkpoint("sft_pseudobag") == lay.final_checkpoint()
    os.makedirs(lay.checkpoint("grpo"))
    assert lay.final_checkpoint() == lay.checkpoint("grpo")
    assert lay.trained_checkpoints() == {"sft": lay.checkpoint("sft_pseudobag"), "grpo": lay.checkpoint("grpo")}
    assert _layout(tmp_path, "grpo.init_from=/x").grpo_init() == "/x"
    assert lay.read_done("sft") == {"steps": 1}
