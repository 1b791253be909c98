"""Strided feature chunks of large slides (data/slide_chunks.py): the patch selection by
hand, a shard round trip that reads only the chunks a selection needs, and the loader's
batch from a chunked store against the same slide stored whole."""

import numpy as np
import pytest

from pathreasoner_jax.data.slide_chunks import encode_slide_records, select_patches
from pathreasoner_jax.records import SlideRecord, decode_slide


def test_selection_takes_interleaved_whole_chunks_by_hand():
    keep = np.arange(20)
    # K = 4 chunks of 20 rows: 10 rows need m = ⌈10·4/20⌉ = 2 chunks, c = ⌊j·4/2⌋ = {0, 2}
    assert select_patches(None, keep, 10, chunks=4).tolist() == list(range(0, 20, 2))
    assert select_patches(None, keep, 5, chunks=4).tolist() == [0, 4, 8, 12, 16]  # chunk 0 alone
    # 6 rows: 2 chunks give 10 rows, spaced down to 6: positions round(linspace(0, 9, 6)) = 0 2 4 5 7 9
    assert select_patches(None, keep, 6, chunks=4).tolist() == [0, 4, 8, 10, 14, 18]
    # rows 0 4 8 12 2 6 dropped with their pseudo-bag: m = ⌈24/14⌉ = 2 chunks {0, 2} keep only
    # 16 10 14 18, so m = 3 (c = 0, 1, 2) finds 9 rows, spaced down to 6 (positions 0 2 3 5 6 8)
    keep = np.setdiff1d(np.arange(20), [0, 4, 8, 12, 2, 6])
    assert select_patches(None, keep, 6, chunks=4).tolist() == [1, 9, 10, 14, 16, 18]
    assert select_patches(None, np.arange(7), 10, chunks=4).tolist() == list(range(7))  # all fit


def _slide(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(40), np.arange(40)), -1).reshape(-1, 2) * 256
    coords = grid[rng.permutation(len(grid))[:n]]  # unsorted, as an extractor may emit them
    return SlideRecord("big", rng.normal(size=(n, d)).astype(np.float32), coords, rng.integers(0, 4, n))


def _shard(tmp_path, records):
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
    path = str(tmp_path / "slides.array_record")
    w = ArrayRecordWriter(path, "group_size:1")
    for r in records:
        w.write(r)
    w.close()
    return ArrayRecordReader(path, "readahead_buffer_size:0")


@pytest.mark.parametrize("dtype", ["", "bfloat16"])
def test_chunked_shard_round_trip_reads_only_the_needed_chunks(tmp_path, dtype):
    rec = _slide(1000)
    records = encode_slide_records(rec, dtype, chunk_rows=128)
    assert len(records) == 1 + 8  # K = ⌈1000 / 128⌉
    r = _shard(tmp_path, [b"x" * 10] + records)  # the slide starts at row 1 of its shard
    back = decode_slide(r.read([1])[0], r.read, 1)
    order = np.lexsort((rec.coords[:, 0], rec.coords[:, 1]))
    want = rec.features[order].astype(back.features.dtype)
    assert back.chunks == 8 and back.features.shape == (1000, 8) and back.num_patches == 1000
    np.testing.assert_array_equal(back.coords, rec.coords[order])
    np.testing.assert_array_equal(back.cluster_ids, rec.cluster_ids[order])
    idx = select_patches(back.coords, np.arange(1000), 256, back.chunks)  # m = ⌈256·8/1000⌉ = 3
    got = back.features[idx]
    assert back.features.chunks_read == 3
    np.testing.assert_array_equal(got, want[idx])
    np.testing.assert_array_equal(np.asarray(back.features), want)
    with pytest.raises(ValueError, match="read it through SlideStore"):
        decode_slide(records[0])
    small = encode_slide_records(_slide(100), dtype, chunk_rows=128)
    assert len(small) == 1 and decode_slide(small[0]).chunks == 1  # the one-record format


def test_loader_batch_from_a_chunked_store_equals_the_whole_slide(tmp_path):
    """With sample_num ≥ N every patch is kept either way, in (y, x) order: the collated
    features must then be the same whether the slide is stored whole or chunked."""
    from pathreasoner_jax.data.encode import ExampleEncoder, collate
    from pathreasoner_jax.records import SampleRecord
    from pathreasoner_jax.tokenizer import IMAGE_TOKEN
    rec = _slide(300)
    r = _shard(tmp_path, encode_slide_records(rec, "", chunk_rows=64))
    chunked = decode_slide(r.read([0])[0], r.read, 0)

    class Tok:
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            ids = [7 if w == IMAGE_TOKEN else 1 for w in text.split()]
            return {"input_ids": ids, "offset_mapping": [(0, 0)] * len(ids)}

    enc = ExampleEncoder(Tok(), 7, sample_num=512)
    sample = SampleRecord("s", "big", "train", f"what is {IMAGE_TOKEN} ?", ["f"], ["r"], "a")
    rng = np.random.default_rng(0)
    b_whole, _ = collate([enc.encode(sample, rec, rng)], [rec], [1024], 512, 0)
    b_chunk, _ = collate([enc.encode(sample, chunked, rng)], [chunked], [1024], 512, 0)
    for k in b_whole:
        np.testing.assert_array_equal(b_whole[k], b_chunk[k], err_msg=k)
    assert chunked.features.chunks_read == 5  # all of K = ⌈300/64⌉ chunks, once


def test_grain_worker_processes_build_the_same_batches(tmp_path):
    import sft_fixtures as fx
    from pathreasoner_jax.data.encode import ExampleEncoder
    from pathreasoner_jax.data.loader import SFTLoader
    from pathreasoner_jax.data.store import SampleSource, SlideStore
    tok, ids = fx.make_tokenizer(str(tmp_path / "tok"))
    samples, slides = fx.make_dataset(8, patches=12)
    fx.write_prep_dir(str(tmp_path / "prep"), {"train": samples}, slides, str(tmp_path / "tok"))
    enc = ExampleEncoder(tok, ids.image, sample_num=8, mask_mode="loss", mask_rate=0.5)
    loader = SFTLoader(SampleSource(str(tmp_path / "prep")), SlideStore(str(tmp_path / "prep")), enc, 4,
                       epochs=3, seed=1, length_buckets=[64, 128], pad_id=ids.pad, process_index=0, process_count=1)
    here = list(loader.iterate(1, 5))
    there = list(loader.iterate(1, 5, num_workers=2))
    assert [k for k, _ in here] == [k for k, _ in there] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(here, there):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_store_bench_reads_a_long_slide_through_few_chunks(tmp_path):
    from benchmarks.prep_store import bench_store
    from pathreasoner_jax.config import load_config
    cfg = load_config(None, ["bench.scale_slides=3", "bench.scale_patches=300", "bench.long_slide_patches=5000",
                             "bench.loader_steps=2", "bench.loader_workers=[0]", "data.slide_chunk_rows=250",
                             "bench.slide_tokens=100", "bench.batch=2", "bench.samples_per_slide=2"])
    out = bench_store(cfg, str(tmp_path))
    assert out["trajectories"]["samples"] == 6 and out["sample_shard_write"]["samples"] == 6
    assert out["slide_shard_write"]["bytes"] >= 3 * 300 * 512 * 2  # bf16 features of 3 slides
    whole, chunked = out["long_slide"]["whole"], out["long_slide"]["chunked"]
    assert whole["rows"] == chunked["rows"] == 100 and (whole["records"], chunked["records"]) == (1, 21)
    # K = 20 chunks of 250 rows; 100 rows need m = ⌈100·20/5000⌉ = 1 chunk: 250 × 512 × 2 bytes
    assert 250 * 512 * 2 < chunked["bytes_read_per_draw"] < 250 * 512 * 2 + 5000 * 24 + 4096
    assert whole["bytes_read_per_draw"] > 5000 * 512 * 2
    assert out["loader"][0]["samples_per_s"] > 0 and out["loader"][0]["sample_num"] == 100
