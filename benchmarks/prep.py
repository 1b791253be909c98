"""`pathreasoner bench prep`: patch throughput on the CMU-1-Small-Region slide.

(a) raw OpenSlide reads: `read_region` of every tissue patch of the tiling plan at its
    pyramid level, one thread, no resize or encoding — the I/O + decode ceiling;
(b) our full path: tissue mask + tiling + threaded reads + resize + batched jitted
    encoding + k-means, i.e. `extract_slide`, after one warm-up run so that XLA
    compilation is not counted.
Each is timed `repeats` times and the best (least disturbed) run is reported.
"""
from __future__ import annotations

import os
import time

import jax


def bench_prep(cfg, repeats: int = 3, slide_path: str = "") -> dict:
    from data_prep.demo.fetch import fetch_cmu_small_region
    from pathreasoner_jax.slides.encoders import build_encoder
    from pathreasoner_jax.slides.extract import extract_slide
    from pathreasoner_jax.slides.reader import open_slide
    from pathreasoner_jax.slides.tiling import plan_tiles

    d = cfg.data
    path = slide_path or fetch_cmu_small_region(d.cache_dir or os.path.join(".cache", "demo"))
    slide = open_slide(path)
    plan = plan_tiles(slide, path, d.target_magnification, d.patch_size, d.default_magnification)
    raw = []
    for _ in range(repeats):
        t = time.perf_counter()
        for x, y in plan.coords:
            slide.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size))
        raw.append(time.perf_counter() - t)
    slide.close()
    enc = build_encoder(d.encoder, d.encoder_weights)
    kw = dict(target_magnification=d.target_magnification, patch_size=d.patch_size,
              default_magnification=d.default_magnification, num_clusters=d.num_clusters,
              num_threads=int(d.read_threads))
    extract_slide(path, enc, **kw)  # warm-up: compile the encoder
    full = []
    for _ in range(repeats):
        t = time.perf_counter()
        extract_slide(path, enc, **kw)
        full.append(time.perf_counter() - t)
    n = len(plan.coords)
    return {"slide": os.path.basename(path), "num_patches": n, "patch_size": d.patch_size,
            "target_magnification": d.target_magnification, "read_level": plan.level,
            "encoder": enc.name, "device": str(jax.devices()[0].platform), "repeats": repeats,
            "raw_openslide_patches_per_s": round(n / min(raw), 1),
            "full_read_filter_encode_patches_per_s": round(n / min(full), 1)}
