"""Defect 2 of SPEC §7, fast: GRPO's policy (and its frozen reference) starts from the SFT
checkpoint found through the run layout, not from a fresh initialisation. The same run's
metrics log carries TRL's GRPOTrainer names."""
import json
import os

import numpy as np
from flax import nnx

from grpo_worker import thirds_reward
from sft_fixtures import make_dataset, make_tokenizer, write_prep_dir

CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_like.yaml")


def _embed(model):
    return np.asarray(nnx.state(model, nnx.Param).to_pure_dict()["llm"]["embed_tokens"])


def test_grpo_starts_from_the_sft_checkpoint_of_the_layout(tmp_path, monkeypatch):
    from pathreasoner_jax.checkpoint import Checkpointer, restore_params
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.grpo import trainer
    from pathreasoner_jax.run_layout import SFT
    from pathreasoner_jax.runtime import setup

    make_tokenizer(str(tmp_path / "tok"))
    train, slides = make_dataset(4, seed=0)
    prep = str(tmp_path / "prep")
    write_prep_dir(prep, {"train": train}, slides, str(tmp_path / "tok"))
    rt = setup(load_config(CFG, [f"run.root={tmp_path / 'run'}", f"data.prep_dir={prep}", "grpo.steps=1",
                                 "grpo.lr=1e-7", "grpo.group_size=4"]))
    sft = rt.build_model(seed=123)  # "SFT" weights: another initialisation than build_model's
    ck = Checkpointer(rt.layout.checkpoint(SFT), async_save=False)
    ck.save(1, sft, meta={"step": 1})
    ck.close()
    assert rt.layout.grpo_init() == rt.layout.checkpoint(SFT)

    monkeypatch.setattr(trainer, "make_reward_fn", lambda *a, **k: thirds_reward)
    out = trainer.train_grpo(rt)
    grpo, fresh = rt.build_model(), rt.build_model()
    restore_params(out, grpo)
    a, b, c = _embed(sft), _embed(grpo), _embed(fresh)
    # one Adam step at lr 1e-7 moves a weight by ~1e-7; another initialisation by ~0.1
    assert float(np.abs(b - a).max()) < 1e-5 < 0.01 < float(np.abs(c - a).max())
    with open(rt.layout.metrics("grpo")) as f:
        rec = json.loads(f.readline())
    trl = {"loss", "reward", "reward_std", "rewards/thirds/mean", "rewards/thirds/std", "learning_rate", "kl",
           "entropy", "grad_norm", "frac_reward_zero_std", "completions/mean_length", "completions/min_length",
           "completions/max_length", "completions/clipped_ratio", "clip_ratio/low_mean", "clip_ratio/high_mean",
           "clip_ratio/region_mean"}
    assert trl <= set(rec), sorted(trl - set(rec))
    assert rec["learning_rate"] == 1e-7 and rec["reward"] == rec["rewards/thirds/mean"]
    assert not any(k.startswith("reward/") or k.startswith("completion_length") for k in rec)
