"""Micro-batches for gradient accumulation and chunked log-prob passes.

`split_rows` takes rows strided, not in contiguous blocks: rows (B, ...) sharded over
D devices in blocks of B/D stay where they are when micro-batch i is rows i, i + M, ...
(a local reshape and transpose), whereas contiguous blocks would put micro-batch 0 on
the first D/M devices only and make XLA reshard every batch. The sums over micro-batches
do not depend on which rows go together, so either split gives the same step.
"""
from __future__ import annotations

import jax


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
