"""The Patho-CLIP train step: a pure function of (params, optimizer state, batch), jitted
with explicit shardings, state donated.

Gradient accumulation must stay exact for a contrastive loss, whose every row depends on
every other row's embedding, so summing per-micro-batch losses (as SFT does) would change
it. With `grad_accum` M > 1 the step caches embeddings (GradCache, Gao et al. 2021):
(1) embed the M micro-batches without keeping activations; (2) the loss of the whole
global batch and its gradient with respect to the embeddings and the logit scale/bias;
(3) per micro-batch, re-embed and pull the cached embedding gradients back through the
towers (a VJP), summing parameter gradients. The loss and gradient equal the M = 1 step
on the same rows; the price is one more forward pass of the towers.

AdamW as open_clip sets it for ViTs (β2 0.98, ε 1e-6; weight decay on matrices only, not
on gains, biases, the class token or the logit scale/bias: open_clip_train's rule), global-norm clipping, warm-up then cosine. After the
update the logit scale is clamped to [0, log max_logit_scale] (open_clip). A non-finite
loss, gradient norm or update keeps the old state and reports `skipped`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pathreasoner_jax.clip.loss import contrastive_loss
from pathreasoner_jax.models.layers import Ctx
from pathreasoner_jax.sharding import use_mesh
from pathreasoner_jax.train.micro import merge_rows, split_rows
from pathreasoner_jax.train.params import finite_or_keep, init_opt_state

def decay_mask(params):
    """True for the leaves AdamW decays: those of 2 dimensions and more (open_clip_train's
    rule; the scalars logit_scale/bias and every gain and bias are 0-D or 1-D)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_clip_optimizer(clip_cfg, total_steps: int):
    warmup = int(round(clip_cfg.warmup_ratio * total_steps))
    sched = (optax.warmup_cosine_decay_schedule(0.0, clip_cfg.lr, warmup, max(total_steps, warmup + 1))
             if warmup else optax.cosine_decay_schedule(clip_cfg.lr, max(total_steps, 1)))
    tx = optax.chain(optax.clip_by_global_norm(clip_cfg.grad_clip) if clip_cfg.grad_clip > 0 else optax.identity(),
                     optax.adamw(sched, b1=0.9, b2=0.98, eps=1e-6, weight_decay=clip_cfg.weight_decay,
                                 mask=decay_mask))
    return tx, sched


@dataclass
class ClipStep:
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Callable
    grad_accum: int
    mesh: Mesh
    loss: str
    max_logit_scale: float
    dtype: Any = jnp.float32

    def embed(self, params, mb):
        """A micro-batch → (unit image embeddings (b, E), unit text embeddings (b, E))."""
        model = nnx.merge(self.graphdef, params)
        return model(mb["pixels"], mb["tokens"], mb["token_mask"], Ctx(dtype=self.dtype))

    def loss_of(self, params, img_be, txt_be):
        model = nnx.merge(self.graphdef, params)
        bias = None if model.logit_bias is None else model.logit_bias[...]
        s, n = contrastive_loss(self.loss, img_be, txt_be, model.logit_scale[...], bias, self.mesh,
                                self.max_logit_scale)
        return s / n

    def loss_and_grads(self, params, batch):
        if self.grad_accum == 1:
            return jax.value_and_grad(lambda p: self.loss_of(p, *self.embed(p, batch)))(params)
        m = self.grad_accum
        micro = split_rows(batch, m)
        img_m, txt_m = jax.lax.map(lambda mb: self.embed(params, mb), micro)  # (M, b, E); no activations kept
        img, txt = merge_rows(img_m, m), merge_rows(txt_m, m)
        loss, (g_params, g_img, g_txt) = jax.value_and_grad(self.loss_of, argnums=(0, 1, 2))(params, img, txt)

        def pull_back(gsum, xs):
            mb, gi, gt = xs
            _, vjp = jax.vjp(lambda p: self.embed(p, mb), params)
            (g,) = vjp((gi, gt))
            return jax.tree.map(jnp.add, gsum, g), None

        grads, _ = jax.lax.scan(pull_back, g_params, (micro, split_rows(g_img, m), split_rows(g_txt, m)))
        return loss, grads

    def apply(self, params, opt_state, grads, loss, step):
        """The optimizer half: clip, AdamW, the logit-scale clamp, the non-finite guard."""
        grad_norm = optax.global_norm(grads)
        updates, new_opt = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ls = new_params["logit_scale"]
        new_params["logit_scale"] = ls.replace(jnp.clip(ls.get_value(), 0.0, jnp.log(self.max_logit_scale)))
        params, opt_state, skipped = finite_or_keep((loss, grad_norm), new_params, new_opt, params, opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.schedule(step),
                   "logit_scale": jnp.exp(params["logit_scale"].get_value()), "skipped": skipped}
        return params, opt_state, metrics

    def step(self, params, opt_state, batch, step):
        loss, grads = self.loss_and_grads(params, batch)
        return self.apply(params, opt_state, grads, loss, step)

    def jitted(self, params, opt_state, batch_example):
        """In/out shardings read off the live state; batch rows over data × fsdp."""
        sh = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
        rows = NamedSharding(self.mesh, P(("data", "fsdp")))
        rep = NamedSharding(self.mesh, P())
        return jax.jit(self._under_mesh, in_shardings=(sh(params), sh(opt_state), jax.tree.map(lambda _: rows,
                       batch_example), rep), out_shardings=(sh(params), sh(opt_state), rep), donate_argnums=(0, 1))

    def _under_mesh(self, *args):
        with use_mesh(self.mesh):
            return self.step(*args)


def make_clip_step(model, clip_cfg, mesh: Mesh, total_steps: int, dtype=jnp.float32):
    """→ (ClipStep, params, opt_state) for `model` (already placed on `mesh`)."""
    graphdef, params = nnx.split(model)
    tx, sched = make_clip_optimizer(clip_cfg, total_steps)
    opt_state = init_opt_state(tx, params, mesh)
    return ClipStep(graphdef, tx, sched, clip_cfg.grad_accum, mesh, clip_cfg.loss, clip_cfg.max_logit_scale,
                    dtype), params, opt_state
