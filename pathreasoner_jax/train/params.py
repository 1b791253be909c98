"""Trainable parameters, the optimizer and its sharded state, shared by SFT and GRPO;
`finite_or_keep`, the non-finite guard both jitted updates end with."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
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


def is_abstract(tree) -> bool:
    """True for a tree of ShapeDtypeStructs (deviceless compilation, pod/), False for arrays."""
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def opt_state_shardings(tx, trainable, mesh: Mesh):
    """(abstract optimizer state, its shardings): every moment in its parameter's sharding,
    everything else (step counts) replicated. Spelled out because XLA gives the zeros of
    `tx.init` no sharding of their own: left to itself it replicates AdamW's moments on
    every device (found by `pathreasoner compile`: 2× the parameters per device)."""
    rep = NamedSharding(mesh, P())
    shapes = jax.eval_shape(tx.init, trainable)
    param_shardings = jax.tree.map(lambda x: x.sharding, trainable)
    shardings = optax.tree_map_params(tx, lambda _, sh: sh, shapes, param_shardings,
                                      transform_non_params=lambda _: rep)
    return shapes, shardings


def init_opt_state(tx, trainable, mesh: Mesh):
    """The optimizer state in the shardings of `opt_state_shardings`; for an abstract
    `trainable` (deviceless compilation) its ShapeDtypeStructs."""
    shapes, shardings = opt_state_shardings(tx, trainable, mesh)
    if is_abstract(trainable):
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return jax.jit(tx.init, out_shardings=shardings)(trainable)


def all_finite(tree) -> jax.Array:
    """Scalar bool: every float leaf of `tree` is free of NaN and inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def finite_or_keep(scalars, new_params, new_opt, old_params, old_opt):
    """Inside a jitted update: (new params, new optimizer state) when `scalars` (loss, grad
    norm, …) and the new params are all finite, else the old ones unchanged. → (params,
    opt_state, skipped as float32 0/1). The choice is made on device, so donated state works."""
    ok = all_finite(list(scalars)) & all_finite(new_params)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    return keep(new_params, old_params), keep(new_opt, old_opt), 1.0 - ok.astype(jnp.float32)
