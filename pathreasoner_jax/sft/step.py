"""The SFT train step: a pure function over explicit state, jitted with explicit shardings.

State is (trainable params, frozen params, optimizer state). Gradient accumulation scans
over micro-batches summing the loss sums and token counts, and divides once at the end,
so the result equals one big batch exactly (losses are (sum, denominator) pairs).

A step whose loss, gradient norm or updated params are not finite keeps the params and
optimizer state it was given (decided inside the jit, since both are donated) and
reports `skipped` = 1; the trainer counts those (train/stage.py NonFiniteGuard).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sharding import use_mesh
from pathreasoner_jax.train.micro import accumulate_grads
from pathreasoner_jax.train.params import finite_or_keep, init_opt_state, make_optimizer, trainable_filter

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
            return s, (n, ())

        gsum, lsum, nsum, _ = accumulate_grads(micro_loss, trainable, batch, self.grad_accum, rng)
        denom = jnp.maximum(nsum, 1.0)
        return lsum / denom, jax.tree.map(lambda g: g / denom, gsum), nsum

    def step(self, trainable, frozen, opt_state, batch, rng, step):
        loss, grads, ntok = self.loss_and_grads(trainable, frozen, batch, rng)
        grad_norm = optax.global_norm(grads)
        updates, new_opt = self.tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        trainable, opt_state, skipped = finite_or_keep((loss, grad_norm), new_trainable, new_opt, trainable,
                                                       opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.schedule(step), "loss_tokens": ntok,
                   "skipped": skipped}
        return trainable, opt_state, metrics

    def jitted(self, trainable, frozen, opt_state, batch_example):
        """The step jitted with in/out shardings read off the live state (and off the batch when
        it is placed on this mesh, else rows over data × fsdp); state donated."""
        sh = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
        rows = NamedSharding(self.mesh, P(("data", "fsdp")))
        batch_sh = jax.tree.map(lambda x: x.sharding if _on(x, self.mesh) else rows, batch_example)
        rep = NamedSharding(self.mesh, P())
        return jax.jit(self._step_under_mesh,
                       in_shardings=(sh(trainable), sh(frozen), sh(opt_state), batch_sh, rep, rep),
                       out_shardings=(sh(trainable), sh(opt_state), rep),
                       donate_argnums=(0, 2))

    def _step_under_mesh(self, *args):
        with use_mesh(self.mesh):
            return self.step(*args)


def _on(x, mesh) -> bool:
    sharding = getattr(x, "sharding", None)
    return isinstance(sharding, NamedSharding) and sharding.mesh == mesh


def make_sft_step(model, sft_cfg, lora_enabled: bool, mesh: Mesh, total_steps: int,
                  loss_fn: Callable = sft_loss):
    """Returns (SFTStep, trainable, frozen, opt_state) for `model` (already sharded)."""
    is_trainable = trainable_filter(sft_cfg, lora_enabled)
    graphdef, trainable, frozen = nnx.split(model, is_trainable, ...)
    tx, sched = make_optimizer(sft_cfg.lr, total_steps, sft_cfg.warmup_ratio, sft_cfg.weight_decay,
                               sft_cfg.grad_clip)
    opt_state = init_opt_state(tx, trainable, mesh)
    return SFTStep(graphdef, tx, sched, sft_cfg.grad_accum, mesh, is_trainable, loss_fn), trainable, frozen, opt_state
