"""`pathreasoner vl-init`, `vl-train`, `vl-eval`, `vl-export`: Patho-R1's recipe on images
(`vl-data` lives in data_prep/vl_data.py)."""
from __future__ import annotations

import os

from pathreasoner_jax.config import load_config
from pathreasoner_jax.core.errors import UserError

STAGE_NAMES = {"pretrain": "vl_pretrain", "sft": "vl_sft", "grpo": "vl_grpo"}


def _cfg(args):
    from pathreasoner_jax import distributed
    cfg = load_config(args.config, args.overrides)
    distributed.initialize(cfg.mesh)
    return cfg


def run_vl_init(args) -> int:
    from pathreasoner_jax.vl.init import vl_init
    vl_init(_cfg(args), force=args.force)
    return 0


def run_vl_train(args) -> int:
    from pathreasoner_jax.vl.runtime import VLRuntime
    from pathreasoner_jax.vl.stages import train_supervised, train_vl_grpo
    rt = VLRuntime(_cfg(args))
    stages = list(STAGE_NAMES) if args.stage == "all" else [args.stage]
    for s in stages:
        stage = STAGE_NAMES[s]
        out = train_vl_grpo(rt, args.force) if s == "grpo" else train_supervised(rt, stage, args.force)
        print(f"vl-train {s}: checkpoints in {out}; metrics in {rt.layout.metrics(stage)}")
    return 0


def run_vl_eval(args) -> int:
    from pathreasoner_jax.vl.evaluate import evaluate_vl, summary_line
    from pathreasoner_jax.vl.runtime import VLRuntime
    rt = VLRuntime(_cfg(args))
    ckpt, tag = args.checkpoint, args.tag
    if args.stage:
        ckpt = rt.layout.checkpoint(STAGE_NAMES[args.stage])
        if not os.path.isdir(ckpt):
            raise UserError(f"{ckpt}: stage {args.stage} has no checkpoint (run `pathreasoner vl-train` first)")
        tag = tag or args.stage
    r = evaluate_vl(rt, ckpt, tag or ("checkpoint" if ckpt else "untrained"))
    print(summary_line(tag or "untrained", r))
    return 0


def run_vl_export(args) -> int:
    from pathreasoner_jax.vl.convert import read_config, save_qwen_vl
    from pathreasoner_jax.vl.runtime import VLRuntime
    rt = VLRuntime(_cfg(args))
    ckpt = args.checkpoint or rt.layout.checkpoint(STAGE_NAMES[args.stage])
    model = rt.build_model(ckpt)
    config = read_config(rt.model_dir)
    save_qwen_vl(model, args.out, config, rt.tokenizer, dtype=args.dtype)
    print(f"vl-export: {ckpt} → {args.out} (Qwen2_5_VLForConditionalGeneration.from_pretrained loads it)")
    return 0
