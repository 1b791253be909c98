"""`pathreasoner grpo`."""
from __future__ import annotations

from pathreasoner_jax.config import load_config
from pathreasoner_jax.runtime import setup


def run_grpo(args) -> int:
    from pathreasoner_jax.grpo.trainer import train_grpo
    rt = setup(load_config(args.config, args.overrides))
    out = train_grpo(rt, force=args.force)
    print(f"grpo: checkpoints in {out}; metrics in {rt.layout.metrics('grpo')}")
    return 0
