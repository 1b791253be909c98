"""SFT input pipeline on grain: shuffled, repeated, encoded, bucketed batches.

The pipeline is a grain `MapDataset` (random access), so batch k of the run is a pure
function of (seed, k): the iterator state saved in a checkpoint is just the next batch
index, and a resumed run sees exactly the batches the uninterrupted run would have.
With several hosts, each host encodes only its own rows of every global batch.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import grain
import jax
import numpy as np

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.data.encode import ExampleEncoder, collate
from pathreasoner_jax.records import SampleRecord, SlideRecord

log = logging.getLogger(__name__)


class SFTLoader:
    def __init__(self, samples: Sequence[SampleRecord], slides: Mapping[str, SlideRecord], encoder: ExampleEncoder,
                 batch_size: int, epochs: int, seed: int, length_buckets: list[int], pad_id: int,
                 process_index: int | None = None, process_count: int | None = None):
        if len(samples) < batch_size:
            where = f"{samples.prep_dir} (split {samples.split!r})" if hasattr(samples, "prep_dir") else "the data"
            raise UserError(f"{where}: {len(samples)} training samples are fewer than one batch of {batch_size} "
                            f"(sft.batch_size); prepare more data or lower sft.batch_size")
        self.ds = grain.MapDataset.source(samples).repeat(epochs).shuffle(seed=seed)
        self.slides, self.encoder = slides, encoder
        self.batch_size, self.seed = batch_size, seed
        self.length_buckets, self.pad_id = length_buckets, pad_id
        self.pi = jax.process_index() if process_index is None else process_index
        self.pc = jax.process_count() if process_count is None else process_count
        if batch_size % self.pc:
            raise ValueError(f"batch size {batch_size} is not divisible by {self.pc} hosts")
        self.truncated = 0

    def __len__(self) -> int:
        return len(self.ds) // self.batch_size

    def host_rows(self, k: int) -> range:
        per = self.batch_size // self.pc
        start = k * self.batch_size + self.pi * per
        return range(start, start + per)

    def batch(self, k: int) -> dict:
        """This host's rows of global batch k, as numpy arrays."""
        batch, truncated = self.build(k)
        self._count(k, truncated)
        return batch

    def iterate(self, start: int, stop: int, num_workers: int = 0, buffer: int = 2):
        """(k, this host's rows of batch k mod len) for k in [start, stop), in order. With
        `num_workers` > 0 (`data.num_workers`) grain worker processes build the batches
        (each reopens the shards), so tokenising and feature reads overlap the train step;
        the batches are the same as in-process (batch k is a pure function of seed and k)."""
        n = len(self)
        if num_workers <= 0:
            for k in range(start, stop):
                yield k, self.batch(k % n)
            return
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we have no absl main
            flags.FLAGS.mark_as_parsed()
        ds = grain.MapDataset.range(start, stop).map(_BuildBatch(self, n))
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=buffer))
        for k, (got, batch, truncated) in zip(range(start, stop), it):
            if int(got) != k:
                raise RuntimeError(f"grain returned batch {int(got)} where {k} was due")
            self._count(k, int(truncated))
            yield k, batch

    def _count(self, k: int, truncated: int) -> None:
        if truncated:
            self.truncated += truncated
            log.warning("batch %d: %d rows longer than the largest length bucket were truncated", k, truncated)

    def build(self, k: int) -> tuple[dict, int]:
        """(this host's rows of global batch k, rows truncated to the largest bucket)."""
        examples, slides = [], []
        for i in self.host_rows(k):
            sample = self.ds[i]
            slide = self.slides[sample.slide_id]
            rng = np.random.default_rng([self.seed, i])
            examples.append(self.encoder.encode(sample, slide, rng))
            slides.append(slide)
        return collate(examples, slides, self.length_buckets, self.encoder.sample_num, self.pad_id)


class _BuildBatch:
    """grain map: global step k → (k, batch k mod n, truncated); picklable for the workers."""

    def __init__(self, loader: SFTLoader, n: int):
        self.loader, self.n = loader, n

    def __call__(self, k):
        batch, truncated = self.loader.build(int(k) % self.n)
        return np.int64(k), batch, np.int64(truncated)
