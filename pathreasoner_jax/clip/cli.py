"""`pathreasoner clip`, `clip-eval` and `clip-export` (`clip-data` lives in data_prep)."""
from __future__ import annotations

from pathreasoner_jax.config import load_config


def _cfg(args):
    from pathreasoner_jax import distributed
    cfg = load_config(args.config, args.overrides)
    distributed.initialize(cfg.mesh)
    return cfg


def run_clip(args) -> int:
    from pathreasoner_jax.clip.trainer import train_clip
    from pathreasoner_jax.run_layout import CLIP, RunLayout
    cfg = _cfg(args)
    out = train_clip(cfg, force=args.force)
    print(f"clip: checkpoints in {out}; metrics in {RunLayout(cfg).metrics(CLIP)}")
    return 0


def run_clip_eval(args) -> int:
    from pathreasoner_jax.clip.evaluate import evaluate_clip, summary_lines
    results = evaluate_clip(_cfg(args), checkpoint=args.checkpoint, untrained=args.untrained, tag=args.tag)
    print("\n".join(summary_lines(results)))
    return 0


def run_clip_export(args) -> int:
    from pathreasoner_jax.checkpoint import restore_params
    from pathreasoner_jax.clip.build import build_model
    from pathreasoner_jax.clip.convert import save_hf
    from pathreasoner_jax.clip.preprocess import load_clip_tokenizer
    from pathreasoner_jax.clip.records import clip_tokenizer_path
    from pathreasoner_jax.run_layout import CLIP, RunLayout
    cfg = _cfg(args)
    tokenizer = load_clip_tokenizer(clip_tokenizer_path(cfg))
    model, _ = build_model(cfg, tokenizer)
    ckpt = args.checkpoint or RunLayout(cfg).checkpoint(CLIP)
    restore_params(ckpt, model)
    out = save_hf(model, args.out, tokenizer, dtype=args.dtype)
    print(f"clip-export: {ckpt} → {out} (transformers.CLIPModel.from_pretrained loads it; "
          f"`features --encoder patho_clip --encoder-weights {out}` uses its image tower)")
    return 0
