"""The run directory, `runs/<run.name>/`: the one place that knows what lives where.

    prep/                 shards, manifest.json, entities.json, tokenizer/  (data.prep_dir overrides)
    checkpoints/<stage>/  orbax steps + DONE once the stage finished; stages: sft, sft_pseudobag, grpo,
                          and clip (Patho-CLIP, its own model: not part of the VLM's chain)
    clip_data/  clip_eval/  Patho-CLIP's image–text store and evaluation        (clip.data_dir overrides)
    vl_data/ vl_init/ vl_eval/  Patho-R1 on images: stores, the vl-init model, evaluation; its stages
                          vl_pretrain, vl_sft, vl_grpo chain (vl.data_dir, vl.hf_path override)
    metrics/<stage>.jsonl tb/<stage>/        training metrics (JSONL, TensorBoard)
    prior.npz             pseudo-bag prior cache                            (sft.prior_path overrides)
    judge_cache.jsonl     semantic-judge replies
    eval/  infer/         evaluation and inference outputs

Which checkpoint is final, where each stage starts from and which models `eval`
compares are rules of the run, so they live here too; trainers, eval, infer and the
HF commands ask this class instead of spelling paths out. Pure path logic: no JAX.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pathreasoner_jax.config import Config
from pathreasoner_jax.core.io import write_json

SFT = "sft"
SFT_PSEUDOBAG = "sft_pseudobag"
GRPO = "grpo"
STAGES = (SFT, SFT_PSEUDOBAG, GRPO)
CLIP = "clip"
VL_STAGES = ("vl_pretrain", "vl_sft", "vl_grpo")  # Patho-R1's three stages on images, in order
DONE = "DONE"


@dataclass(frozen=True)
class RunLayout:
    cfg: Config

    @property
    def root(self) -> str:
        return os.path.join(self.cfg.run.root, self.cfg.run.name)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # ---------------------------------------------------------------- inputs
    @property
    def prep_dir(self) -> str:
        return self.cfg.data.prep_dir or self.path("prep")

    @property
    def tokenizer_dir(self) -> str:
        m = self.cfg.model
        return m.tokenizer_path or m.llm.hf_path or os.path.join(self.prep_dir, "tokenizer")

    @property
    def prior_path(self) -> str:
        return self.cfg.sft.prior_path or self.path("prior.npz")

    @property
    def judge_cache(self) -> str:
        return self.path("judge_cache.jsonl")

    # ---------------------------------------------------------------- stages
    @property
    def sft_stage(self) -> str:
        """The SFT stage this config trains: pseudo-bag masking is a stage of its own."""
        return SFT_PSEUDOBAG if self.cfg.sft.pseudo_bag else SFT

    def checkpoint(self, stage: str) -> str:
        if stage not in STAGES + (CLIP,) + VL_STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
        return self.path("checkpoints", stage)

    def stage_done(self, stage: str) -> bool:
        return os.path.exists(os.path.join(self.checkpoint(stage), DONE))

    def mark_done(self, stage: str, info: dict) -> None:
        write_json(os.path.join(self.checkpoint(stage), DONE), info)

    def read_done(self, stage: str) -> dict:
        with open(os.path.join(self.checkpoint(stage), DONE)) as f:
            return json.load(f)

    def sft_init(self) -> str:
        """Where the SFT stage starts: sft.init_from, else the plain SFT stage for pseudo-bag
        training, else "" (the model's own initialisation)."""
        return self.cfg.sft.init_from or (self.checkpoint(SFT) if self.cfg.sft.pseudo_bag else "")

    def prior_model(self) -> str:
        """The model the pseudo-bag prior's Δ comes from: sft.init_from, else the plain SFT stage."""
        return self.cfg.sft.init_from or self.checkpoint(SFT)

    def last_sft(self) -> str:
        """The last finished SFT stage (pseudo-bag over plain); the plain one when none finished."""
        for stage in (SFT_PSEUDOBAG, SFT):
            if self.stage_done(stage):
                return self.checkpoint(stage)
        return self.checkpoint(SFT)

    def grpo_init(self) -> str:
        """GRPO's starting point (also its frozen reference policy): grpo.init_from, else the last SFT."""
        return self.cfg.grpo.init_from or self.last_sft()

    def final_checkpoint(self) -> str:
        """The last trained model: GRPO's if present, else the last SFT stage's (may not exist yet)."""
        grpo = self.checkpoint(GRPO)
        return grpo if os.path.isdir(grpo) else self.last_sft()

    def trained_checkpoints(self) -> dict[str, str]:
        """{"sft": ..., "grpo": ...} for the trained models present, in training order."""
        found = {}
        if os.path.isdir(self.last_sft()):
            found["sft"] = self.last_sft()
        if os.path.isdir(self.checkpoint(GRPO)):
            found["grpo"] = self.checkpoint(GRPO)
        return found

    # ---------------------------------------------------------------- outputs
    @property
    def metrics_dir(self) -> str:
        return self.path("metrics")

    def metrics(self, stage: str) -> str:
        return os.path.join(self.metrics_dir, f"{stage}.jsonl")

    def tensorboard(self, stage: str) -> str:
        return self.path("tb", stage)

    @property
    def clip_data_dir(self) -> str:
        return self.cfg.clip.data_dir or self.path("clip_data")

    @property
    def clip_eval_dir(self) -> str:
        return self.path("clip_eval")

    @property
    def vl_data_dir(self) -> str:
        return self.cfg.vl.data_dir or self.path("vl_data")

    @property
    def vl_model_dir(self) -> str:
        """The Qwen2.5-VL folder the recipe starts from: vl.hf_path, else what vl-init wrote."""
        return self.cfg.vl.hf_path or self.path("vl_init")

    @property
    def vl_eval_dir(self) -> str:
        return self.path("vl_eval")

    def vl_init(self, stage: str) -> str:
        """Where a VL stage starts: the previous stage's checkpoint ("" for the first, which
        starts from `vl_model_dir`); a stage whose predecessor never ran starts from its own
        predecessor's start, so any stage can be skipped (vl.*_steps = 0)."""
        i = VL_STAGES.index(stage)
        for prev in reversed(VL_STAGES[:i]):
            if self.stage_done(prev):
                return self.checkpoint(prev)
        return ""

    @property
    def eval_dir(self) -> str:
        return self.path("eval")

    @property
    def infer_dir(self) -> str:
        return self.path("infer")
