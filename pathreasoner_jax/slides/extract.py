"""Slide → patch features: tissue tiling, threaded patch reads, batched jitted encoding.

Reads for batch k+1 are queued on a thread pool (OpenSlide releases the GIL while
decoding tiles) before batch k is dispatched to the encoder, so decoding and encoding
overlap. Used by `pathreasoner features`, `prepare` and inference on a raw slide.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pathreasoner_jax.slides.cluster import kmeans
from pathreasoner_jax.slides.encoders import PatchEncoder
from pathreasoner_jax.slides.h5io import FeatureFile
from pathreasoner_jax.core.errors import one_line
from pathreasoner_jax.slides.reader import SlideError, open_slide, slide_id_of
from pathreasoner_jax.slides.tiling import TilingPlan, plan_tiles, read_patch


def encode_plan(slide, plan: TilingPlan, encoder: PatchEncoder, num_threads: int = 4,
                progress: bool = False, desc: str = "") -> np.ndarray:
    """Features (N, D) float32 of the plan's patches, in coords order."""
    coords = plan.coords
    bs = encoder.batch_size
    batches = [coords[i:i + bs] for i in range(0, len(coords), bs)]
    out = []
    bar = None
    if progress:
        from pathreasoner_jax.core.progress import Progress
        bar = Progress(desc or "patches", len(coords), unit="patch")

    def read(xy):
        return read_patch(slide, plan, xy, encoder.input_size)

    try:
        with ThreadPoolExecutor(max(1, num_threads)) as ex:
            futs = [ex.submit(read, xy) for xy in batches[0]] if batches else []
            for k in range(len(batches)):
                imgs = np.stack([f.result() for f in futs])
                if k + 1 < len(batches):
                    futs = [ex.submit(read, xy) for xy in batches[k + 1]]
                out.append(encoder.encode_async(imgs))
                if bar is not None:
                    bar.update(len(imgs))
    except SlideError:
        raise
    except Exception as e:  # openslide decode errors on corrupt tiles
        raise SlideError(f"{plan.path}: reading patches failed ({one_line(e)})") from None
    finally:
        if bar is not None:
            bar.close()
    if not out:
        return np.zeros((0, encoder.dim), np.float32)
    return np.concatenate([np.asarray(o) for o in out]).astype(np.float32)


def extract_slide(path: str, encoder: PatchEncoder, target_magnification: float = 20.0,
                  patch_size: int = 256, default_magnification: float | None = 20.0,
                  min_tissue: float = 0.25, num_clusters: int = 8, num_threads: int = 4,
                  progress: bool = False) -> FeatureFile:
    """One slide file → FeatureFile (features, level-0 coords, TRIDENT attrs, k-means clusters).

    Raises SlideError (one line naming the file and the cause) on any bad input.
    """
    slide = open_slide(path)
    try:
        plan = plan_tiles(slide, path, target_magnification, patch_size, default_magnification, min_tissue)
        feats = encode_plan(slide, plan, encoder, num_threads, progress, desc=slide_id_of(path))
    finally:
        slide.close()
    if not np.all(np.isfinite(feats)):
        raise SlideError(f"{path}: the encoder produced non-finite features")
    ids, _ = kmeans(feats, num_clusters)
    w0, h0 = plan.level0_size
    attrs = {"patch_size": int(patch_size), "patch_size_level0": int(plan.patch_size_level0),
             "level0_magnification": float(plan.base_magnification),
             "target_magnification": float(target_magnification), "overlap": 0,
             "name": slide_id_of(path), "level0_width": int(w0), "level0_height": int(h0),
             "encoder": encoder.name, "source_path": path, "read_level": int(plan.level),
             "patch_level": int(plan.level),  # CLAM's name for the pyramid level read
             "tissue_fraction": float(plan.tissue_fraction),
             "magnification_source": plan.magnification_source}
    return FeatureFile(feats, plan.coords, attrs, ids)
