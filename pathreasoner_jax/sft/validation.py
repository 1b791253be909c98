"""SFT validation loss (TRL's `eval_loss`) on the prepared `val` split.

The plain masked-SFT loss of every val batch: no trajectory masking, no pseudo-bag drop,
dropout off, so the number is comparable across steps and runs. Losses are (sum,
denominator) pairs summed over the batches and divided once, so the value is the mean
over all val tokens, independent of how the split falls into batches (the last partial
batch is dropped, as in training, so shapes stay static).
"""
from __future__ import annotations

from typing import Optional

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pathreasoner_jax.data.encode import ExampleEncoder
from pathreasoner_jax.data.loader import SFTLoader
from pathreasoner_jax.metrics_log import warn0
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sharding import use_mesh
from pathreasoner_jax.train.stage import shard_rows


class ValidationLoss:
    """`__call__(trainable, frozen)` → the val split's token-mean SFT loss, or None when the
    split has fewer samples than one batch (said once)."""

    def __init__(self, rt, step_fn, slides, stage: str):
        from pathreasoner_jax.data.store import SampleSource
        cfg = rt.cfg
        self.mesh, self.graphdef = rt.mesh, step_fn.graphdef
        samples = SampleSource(rt.layout.prep_dir, "val")
        self.loader: Optional[SFTLoader] = None
        if len(samples) < cfg.sft.batch_size:
            warn0(f"{stage}: the val split has {len(samples)} sample(s), fewer than one batch of "
                  f"{cfg.sft.batch_size}; no eval_loss is logged")
            return
        encoder = ExampleEncoder(rt.tokenizer, rt.ids.image, cfg.data.sample_num, cfg.sft.trajectory_mask_mode,
                                 0.0, 0.0, None)
        self.loader = SFTLoader(samples, slides, encoder, cfg.sft.batch_size, 1, cfg.run.seed,
                                cfg.data.length_buckets, rt.ids.pad)
        self._fn = None

    def _sum_and_count(self, trainable, frozen, batch):
        with use_mesh(self.mesh):
            model = nnx.merge(self.graphdef, trainable, frozen)
            return sft_loss(model, batch, model.ctx(rng=None))

    def __call__(self, trainable, frozen) -> Optional[float]:
        if self.loader is None:
            return None
        if self._fn is None:
            rep = NamedSharding(self.mesh, P())
            self._fn = jax.jit(self._sum_and_count, out_shardings=(rep, rep))
        total, count = 0.0, 0.0
        for k in range(len(self.loader)):
            s, n = self._fn(trainable, frozen, shard_rows(self.loader.batch(k), self.mesh))
            total, count = total + float(s), count + float(n)
        return total / count if count > 0 else None
