"""Contrastive batches from an image–text split, a pure function of (seed, step).

Epoch e visits the split in the order `numpy.random.default_rng((seed, e)).permutation(n)`;
step t is batch t mod steps_per_epoch of epoch t // steps_per_epoch. So a resumed run
that asks for `batch(step)` again gets exactly the rows it would have had, with no
loader state to checkpoint. With drop_last the tail of each epoch's order (n mod B
rows) is skipped, so every batch has B rows (one compiled step); without it the last
batch of an epoch is short. Decoding and resizing run in-process (a thread pool).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from pathreasoner_jax.clip.preprocess import preprocess_images, tokenize
from pathreasoner_jax.core.errors import UserError


def encode_texts(tokenizer, texts, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot prompts or captions → (tokens (N, L) int32, mask (N, L) int32)."""
    return tokenize(tokenizer, list(texts), context_length)


class ClipBatches:
    """source: len + [i] → ImageText (`ImageTextStore.split(...)`). epochs None: unbounded
    (`len()` then raises TypeError; ask `steps_per_epoch`)."""

    def __init__(self, source, tokenizer, image_size: int, context_length: int, batch_size: int, seed: int,
                 epochs: Optional[int] = None, drop_last: bool = True, threads: int = 4):
        self.source, self.tokenizer = source, tokenizer
        self.image_size, self.context_length = int(image_size), int(context_length)
        self.batch_size, self.seed, self.epochs = int(batch_size), int(seed), epochs
        self.drop_last, self.threads = bool(drop_last), int(threads)
        self.n = len(source)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        full, tail = divmod(self.n, self.batch_size)
        self.steps_per_epoch = full if drop_last else full + (tail > 0)
        if self.steps_per_epoch == 0:
            raise UserError(f"{source!r}: {self.n} image-text pairs, fewer than one batch of {self.batch_size}"
                            + (" (drop_last)" if drop_last else ""))
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("ClipBatches with epochs=None is unbounded; use steps_per_epoch")
        return self.steps_per_epoch * int(self.epochs)

    def order(self, epoch: int) -> np.ndarray:
        """(n,) int64: the visiting order of `epoch`, a permutation of the split."""
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.seed, int(epoch))).permutation(self.n)
            self._perm_epoch = int(epoch)
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        """(B,) row indices of `step` (fewer in a short last batch without drop_last)."""
        if step < 0 or (self.epochs is not None and step >= len(self)):
            raise IndexError(f"step {step} outside 0..{len(self) - 1 if self.epochs is not None else '∞'}")
        epoch, j = divmod(int(step), self.steps_per_epoch)
        return self.order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]

    def batch(self, step: int) -> dict:
        """{"pixels": (B, S, S, 3) float32, "tokens": (B, L) int32, "token_mask": (B, L) int32,
        "labels": (B,) int32 (−1: no class)}."""
        recs = [self.source[int(i)] for i in self.indices(step)]
        tokens, mask = tokenize(self.tokenizer, [r.caption for r in recs], self.context_length)
        return {"pixels": preprocess_images([r.image_png for r in recs], self.image_size, threads=self.threads),
                "tokens": tokens, "token_mask": mask,
                "labels": np.asarray([r.label for r in recs], np.int32).reshape(len(recs))}

    def iterate(self, start: int = 0, stop: Optional[int] = None) -> Iterator[tuple[int, dict]]:
        """(step, batch) for start ≤ step < stop (stop None: len(), or forever if unbounded)."""
        if stop is None and self.epochs is not None:
            stop = len(self)
        step = int(start)
        while stop is None or step < stop:
            yield step, self.batch(step)
            step += 1
