"""Micro-batches for gradient accumulation and chunked log-prob passes.

`split_rows` takes rows strided, not in contiguous blocks: rows (B, ...) sharded over
D devices in blocks of B/D stay where they are when micro-batch i is rows i, i + M, ...
(a local reshape and transpose), whereas contiguous blocks would put micro-batch 0 on
the first D/M devices only and make XLA reshard every batch. The sums over micro-batches
do not depend on which rows go together, so either split gives the same step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def split_rows(tree, micro: int):
    """(B, ...) leaves → (micro, B / micro, ...); micro-batch i holds rows i, i + micro, ..."""
    def split(x):
        x = x.reshape((x.shape[0] // micro, micro) + x.shape[1:])
        return x.swapaxes(0, 1)
    return jax.tree.map(split, tree)


def merge_rows(tree, micro: int):
    """The inverse of `split_rows`: (micro, B / micro, ...) → (B, ...) in the original row order."""
    def merge(x):
        x = x.swapaxes(0, 1)
        return x.reshape((x.shape[0] * micro,) + x.shape[2:])
    return jax.tree.map(merge, tree)


def micro_key(rng, i):
    """Micro-batch i's dropout key (None: dropout off)."""
    return None if rng is None else jax.random.fold_in(rng, i)


def accumulate_grads(loss_fn, params, rows, micro: int, rng):
    """Scans `loss_fn(params, micro_batch, key) → (sum, (denominator, aux))` over the `micro`
    splits of `rows` → (gradient sum, loss sum, denominator sum, aux stacked (micro, ...)).
    The caller divides by the denominator sum once, so the step equals one big batch."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro == 1:  # no one-trip loop and no zero-initialised sums to add into
        (s, (d, aux)), g = grad_fn(params, rows, micro_key(rng, 0))
        return g, s, d, jax.tree.map(lambda a: a[None], aux)

    def body(carry, xs):
        gsum, lsum, dsum = carry
        mb, i = xs
        (s, (d, aux)), g = grad_fn(params, mb, micro_key(rng, i))
        return (jax.tree.map(jnp.add, gsum, g), lsum + s, dsum + d), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    (gsum, lsum, dsum), aux = jax.lax.scan(body, (zeros, jnp.float32(0), jnp.float32(0)),
                                           (split_rows(rows, micro), jnp.arange(micro)))
    return gsum, lsum, dsum, aux
