"""Trainable parameters, the optimizer and its sharded state, shared by SFT and GRPO."""
from __future__ import annotations

from typing import Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pathreasoner_jax.models.layers import LoRAParam

MODULES = ("llm", "slide_encoder", "projector")


def trainable_filter(sft_cfg, lora_enabled: bool):
    """nnx filter of trainable parameters: LoRA adapters only (or the whole LLM), the slide
    encoder and projector fully; minus the modules named in `sft.freeze`."""
    frozen = set(sft_cfg.freeze)
    unknown = frozen - set(MODULES)
    if unknown:
        raise ValueError(f"sft.freeze: unknown module(s) {sorted(unknown)}; choose from {MODULES}")

    def is_trainable(path, var) -> bool:
        if not isinstance(var, nnx.Param):
            return False
        top = str(path[0])
        if top in frozen:
            return False
        if top == "llm" and lora_enabled and sft_cfg.train_lora_only:
            return isinstance(var, LoRAParam)
        return True
    return is_trainable


def make_optimizer(lr: float, total_steps: int, warmup_ratio: float, weight_decay: float, grad_clip: float,
                   schedule: str = "cosine") -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with linear warm-up then cosine decay (or constant), global-norm clipping."""
    warmup = max(1, int(round(warmup_ratio * total_steps))) if warmup_ratio > 0 else 0
    if schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1))
    else:
        sched = optax.constant_schedule(lr)
    tx = optax.chain(optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
                     optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))
    return tx, sched


def init_opt_state(tx, trainable, mesh: Mesh):
    """Optimizer moments take their parameter's sharding; scalars (counts) are replicated."""
    rep = NamedSharding(mesh, P())
    state = jax.jit(tx.init)(trainable)

    def place(x):
        on_mesh = isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        return x if on_mesh else jax.device_put(x, rep)
    return jax.tree.map(place, state)
