"""The SFT train step: a pure function over explicit state, jitted with explicit shardings.

State is (trainable params, frozen params, optimizer state). Gradient accumulation scans
over micro-batches summing the loss sums and token counts, and divides once at the end,
so the result equals one big batch exactly (losses are (sum, denominator) pairs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pathreasoner_jax.models.layers import LoRAParam
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sharding import use_mesh

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


def split_batch(batch: dict, micro: int) -> dict:
    """(B, ...) → (micro, B / micro, ...)."""
    return jax.tree.map(lambda x: x.reshape((micro, x.shape[0] // micro) + x.shape[1:]), batch)


@dataclass
class SFTStep:
    """Holds the graph definition and the jitted step. Build with `make_sft_step`."""
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Callable
    grad_accum: int
    mesh: Mesh
    filter: Callable
    loss_fn: Callable = sft_loss

    def loss_and_grads(self, trainable, frozen, batch, rng):
        def micro_loss(t, mb, key):
            model = nnx.merge(self.graphdef, t, frozen)
            s, n = self.loss_fn(model, mb, model.ctx(rng=key))
            return s, n

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        mbs = split_batch(batch, self.grad_accum)
        zeros = jax.tree.map(jnp.zeros_like, trainable)

        def body(carry, xs):
            gsum, lsum, nsum = carry
            mb, i = xs
            (s, n), g = grad_fn(trainable, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, gsum, g), lsum + s, nsum + n), None

        (gsum, lsum, nsum), _ = jax.lax.scan(body, (zeros, 0.0, 0.0), (mbs, jnp.arange(self.grad_accum)))
        denom = jnp.maximum(nsum, 1.0)
        return lsum / denom, jax.tree.map(lambda g: g / denom, gsum), nsum

    def step(self, trainable, frozen, opt_state, batch, rng, step):
        loss, grads, ntok = self.loss_and_grads(trainable, frozen, batch, rng)
        updates, opt_state = self.tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": self.schedule(step),
                   "loss_tokens": ntok}
        return trainable, opt_state, metrics

    def jitted(self, trainable, frozen, opt_state, batch_example):
        """The step jitted with in/out shardings read off the live state; state donated."""
        sh = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
        batch_sh = jax.tree.map(lambda x: NamedSharding(self.mesh, P(("data", "fsdp"))), batch_example)
        rep = NamedSharding(self.mesh, P())
        return jax.jit(self._step_under_mesh,
                       in_shardings=(sh(trainable), sh(frozen), sh(opt_state), batch_sh, rep, rep),
                       out_shardings=(sh(trainable), sh(opt_state), rep),
                       donate_argnums=(0, 2))

    def _step_under_mesh(self, *args):
        with use_mesh(self.mesh):
            return self.step(*args)


def init_opt_state(tx, trainable, mesh: Mesh):
    """Optimizer moments take their parameter's sharding; scalars (counts) are replicated."""
    rep = NamedSharding(mesh, P())
    state = jax.jit(tx.init)(trainable)

    def place(x):
        on_mesh = isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        return x if on_mesh else jax.device_put(x, rep)
    return jax.tree.map(place, state)


def make_sft_step(model, sft_cfg, lora_enabled: bool, mesh: Mesh, total_steps: int,
                  loss_fn: Callable = sft_loss):
    """Returns (SFTStep, trainable, frozen, opt_state) for `model` (already sharded)."""
    is_trainable = trainable_filter(sft_cfg, lora_enabled)
    graphdef, trainable, frozen = nnx.split(model, is_trainable, ...)
    tx, sched = make_optimizer(sft_cfg.lr, total_steps, sft_cfg.warmup_ratio, sft_cfg.weight_decay,
                               sft_cfg.grad_clip)
    opt_state = init_opt_state(tx, trainable, mesh)
    return SFTStep(graphdef, tx, sched, sft_cfg.grad_accum, mesh, is_trainable, loss_fn), trainable, frozen, opt_state
