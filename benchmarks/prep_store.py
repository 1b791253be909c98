"""The store half of `bench prep-scale`: trajectory writing, shard writing and the SFT
loader's read throughput at real slide sizes, on synthetic records.

- trajectories: `TemplateWriter` + sample encoding (samples/s);
- shard write: `bench.scale_slides` slides of `bench.scale_patches` × 512 bf16 features
  (array_record, atomic) and their samples (MB/s, records/s);
- loader: `SFTLoader` batches of `bench.batch` rows (tokenise, pick `data.sample_num`
  patches, gather their features to float32) in process and with grain worker processes
  (samples/s, MB/s of features delivered);
- one `bench.long_slide_patches` slide: reading `data.sample_num` rows of it stored whole
  vs in strided chunks (`data.slide_chunk_rows`): ms and bytes read per draw.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time

import numpy as np

from pathreasoner_jax.core.io import write_json

DIM = 512


def _slide(sid: str, n: int, rng: np.random.Generator):
    from pathreasoner_jax.records import SlideRecord
    side = int(np.ceil(np.sqrt(n)))
    coords = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * 256
    return SlideRecord(sid, rng.standard_normal((n, DIM), np.float32), coords, rng.integers(0, 8, n))


def _samples(slide_ids: list[str], per_slide: int, rng: random.Random):
    from data_prep.writers import ReasoningInput, TemplateWriter
    from pathreasoner_jax.records import SampleRecord
    dx = ["adenocarcinoma", "squamous cell carcinoma", "lymphoma", "melanoma"]
    finds = ["gland crowding", "nuclear atypia", "keratin pearls", "mitotic figures", "necrosis", "sheets of cells"]
    writer, out = TemplateWriter(), []
    for sid in slide_ids:
        for j in range(per_slide):
            d, fs = rng.choice(dx), rng.sample(finds, 3)
            paths = [(f, f"{f} is associated with {d}", [f, d]) for f in fs]
            t = writer.write(ReasoningInput(f"{sid}::{j}", fs, paths, d, seed=j))
            out.append(SampleRecord(f"{sid}::{j}", sid, "train", "What is the diagnosis? <image>", t.findings,
                                    t.reasoning, t.answer, d, [d, *fs]))
    return out


def bench_store(cfg, root: str) -> dict:
    from data_prep.shards import SLIDE_WRITER_OPTIONS, write_shard
    from pathreasoner_jax.data.slide_chunks import encode_slide_records
    from pathreasoner_jax.records import encode_sample
    from pathreasoner_jax.tokenizer import train_demo_tokenizer
    b = cfg.bench
    rng = np.random.default_rng(cfg.run.seed)
    ids = [f"bench-{i:05d}" for i in range(b.scale_slides)]
    out: dict = {}
    t = time.perf_counter()
    samples = _samples(ids, b.samples_per_slide, random.Random(cfg.run.seed))
    encoded = [encode_sample(s) for s in samples]
    dt = time.perf_counter() - t
    out["trajectories"] = {"writer": "template", "samples": len(samples), "samples_per_s": round(len(samples) / dt, 1)}

    prep = os.path.join(root, "prep")
    os.makedirs(prep, exist_ok=True)
    base = _slide("base", b.scale_patches, rng)  # one feature block for every slide: generating is not timed
    rows, index = [0], {}

    def slide_bytes():
        for sid in ids:
            rec = dataclasses.replace(base, slide_id=sid)
            recs = encode_slide_records(rec, "bfloat16", cfg.data.slide_chunk_rows)
            index[sid] = [0, rows[0]]
            rows[0] += len(recs)
            yield from recs

    t = time.perf_counter()
    slide_shard = write_shard(os.path.join(prep, "slides-00000-of-00001.array_record"), slide_bytes(),
                              SLIDE_WRITER_OPTIONS)
    dt = time.perf_counter() - t
    size = os.path.getsize(os.path.join(prep, slide_shard["path"]))
    out["slide_shard_write"] = {"slides": len(ids), "patches_per_slide": b.scale_patches, "dtype": "bfloat16",
                                "bytes": size, "s": round(dt, 2), "slides_per_s": round(len(ids) / dt, 1),
                                "mb_per_s": round(size / dt / 1e6, 1)}
    t = time.perf_counter()
    sample_shard = write_shard(os.path.join(prep, "samples-train-00000-of-00001.array_record"), encoded)
    dt = time.perf_counter() - t
    out["sample_shard_write"] = {"samples": len(encoded), "samples_per_s": round(len(encoded) / dt, 1)}
    empty = {sp: [] for sp in ("val", "test")}
    write_json(os.path.join(prep, "manifest.json"), {"shards": {"slides": [slide_shard], "samples": {
        "train": [sample_shard], **empty}}, "slide_index": index})
    train_demo_tokenizer([s.question for s in samples[:200]] + [s.trajectory for s in samples[:200]],
                         os.path.join(prep, "tokenizer"), vocab_size=1000)
    out["loader"] = _loader_rates(cfg, prep)
    out["long_slide"] = _long_slide(cfg, root, rng)
    return out


def _loader_rates(cfg, prep: str) -> list[dict]:
    """SFT loader samples/s over bench.loader_steps batches (after one untimed batch, which
    for the grain runs includes starting the worker processes), per worker count."""
    from pathreasoner_jax.data.encode import ExampleEncoder
    from pathreasoner_jax.data.loader import SFTLoader
    from pathreasoner_jax.data.store import SampleSource, SlideStore
    from pathreasoner_jax.tokenizer import load_tokenizer, special_ids
    b = cfg.bench
    tok = load_tokenizer(os.path.join(prep, "tokenizer"))
    ids = special_ids(tok)
    sample_num = b.slide_tokens or cfg.data.sample_num
    batch = b.batch or 8
    enc = ExampleEncoder(tok, ids.image, sample_num, "loss", 0.5)
    res = []
    for workers in b.loader_workers:
        loader = SFTLoader(SampleSource(prep), SlideStore(prep), enc, batch, epochs=1000, seed=cfg.run.seed,
                           length_buckets=[sample_num + 512], pad_id=ids.pad, process_index=0, process_count=1)
        it = loader.iterate(0, b.loader_steps + 1, workers)
        next(it)
        t = time.perf_counter()
        feats = sum(int(bt["features"].nbytes) for _, bt in it)
        dt = time.perf_counter() - t
        n = b.loader_steps * batch
        res.append({"workers": workers, "batch": batch, "sample_num": sample_num, "batches": b.loader_steps,
                    "samples_per_s": round(n / dt, 1), "feature_mb_per_s": round(feats / dt / 1e6, 1)})
    return res


def _long_slide(cfg, root: str, rng) -> dict:
    """ms and bytes per draw of data.sample_num rows of one long slide, whole vs chunked."""
    from array_record.python.array_record_module import ArrayRecordReader
    from data_prep.shards import SLIDE_WRITER_OPTIONS, write_shard
    from pathreasoner_jax.data.slide_chunks import encode_slide_records, slide_patches
    from pathreasoner_jax.records import decode_slide
    b = cfg.bench
    rec = _slide("long", b.long_slide_patches, rng)
    sample_num = b.slide_tokens or cfg.data.sample_num
    out = {"patches": b.long_slide_patches, "sample_num": sample_num, "chunk_rows": cfg.data.slide_chunk_rows}
    for name, chunk_rows in (("whole", 0), ("chunked", cfg.data.slide_chunk_rows)):
        recs = encode_slide_records(rec, "bfloat16", chunk_rows)
        path = os.path.join(root, f"long-{name}.array_record")
        write_shard(path, recs, SLIDE_WRITER_OPTIONS)
        r = ArrayRecordReader(path, "readahead_buffer_size:0")
        times, nbytes = [], 0
        for _ in range(max(b.repeats, 3)):
            t = time.perf_counter()
            s = decode_slide(r.read([0])[0], r.read, 0)
            x = s.features[slide_patches(s, np.arange(s.num_patches), sample_num)].astype(np.float32)
            times.append(time.perf_counter() - t)
            nbytes = len(recs[0]) + sum(len(recs[1 + c]) for c in range(getattr(s.features, "chunks_read", 0)))
        r.close()
        out[name] = {"records": len(recs), "ms_per_draw": round(1e3 * float(np.median(times)), 2),
                     "bytes_read_per_draw": nbytes, "rows": int(x.shape[0])}
    return out
