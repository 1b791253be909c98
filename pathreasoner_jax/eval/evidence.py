"""Evidence maps: which slide regions support a KG entity, drawn over the slide thumbnail.

Attribution is occlusion by pseudo-bag cluster (the same Δ as SPEC §5's entity-drop prior):
remove one cluster's patches, re-score, and read the drop. We use occlusion rather than
gradients because (1) it measures the model's actual output change when the evidence is
gone, not a local linearisation that saturates through softmax/attention; (2) it reuses the
Δ machinery the prior already needs, at K+1 forward passes per entity (K = 8 clusters);
(3) clusters are morphologically coherent regions, which is the granularity a pathologist
reads. Its resolution is the cluster, not the patch.

Everything here is pure numpy/pillow; the model-specific `score_fn` comes from the caller.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image

Downsample = Union[float, Sequence[float]]


# ---------------------------------------------------------------- occlusion

def cluster_drops(score_fn: Callable[[np.ndarray], float], cluster_ids: np.ndarray,
                  *, min_size: int = 1) -> dict[int, float]:
    """Score drop per cluster: score_fn(all patches) − score_fn(all but cluster c).

    score_fn: keep_mask (N,) bool → float, higher = more support (e.g. the log-likelihood of
      the entity's tokens given the kept patches). It is called K+1 times.
    cluster_ids: (N,) int cluster of each patch.
    min_size: clusters with fewer patches are not occluded (drop 0.0): removing a handful of
      patches says little, and it saves forward passes (SPEC §5 uses max(1, ⌊ε·N⌋)).
    """
    cluster_ids = np.asarray(cluster_ids)
    full = float(score_fn(np.ones(cluster_ids.shape, dtype=bool)))
    drops = {}
    for c in np.unique(cluster_ids):
        member = cluster_ids == c
        drops[int(c)] = full - float(score_fn(~member)) if member.sum() >= min_size else 0.0
    return drops


def occlusion_scores(score_fn: Callable[[np.ndarray], float], cluster_ids: np.ndarray,
                     *, min_size: int = 1) -> np.ndarray:
    """Per-patch evidence (N,) float32, a distribution over patches (sums to 1).

    Each cluster's mass is its positive drop (a cluster whose removal raises the score is no
    evidence for the entity) over the sum of positive drops, spread evenly over its patches.
    All zeros when no cluster's removal lowers the score (no evidence anywhere).
    """
    cluster_ids = np.asarray(cluster_ids)
    drops = cluster_drops(score_fn, cluster_ids, min_size=min_size)
    positive = {c: max(d, 0.0) for c, d in drops.items()}
    total = sum(positive.values())
    out = np.zeros(cluster_ids.shape, dtype=np.float32)
    if total <= 0 or not np.isfinite(total):
        return out
    for c, d in positive.items():
        member = cluster_ids == c
        out[member] = d / total / member.sum()
    return out


# ---------------------------------------------------------------- rasterising and drawing

def rasterize_patch_scores(coords: np.ndarray, patch_size: float, scores: np.ndarray,
                           thumb_size: tuple[int, int], downsample: Downsample) -> np.ndarray:
    """Paint per-patch scores onto the thumbnail grid.

    coords: (N, 2) level-0 (x, y) of each patch's top-left corner.
    patch_size: patch side at level 0, in pixels.
    scores: (N,) per-patch values.
    thumb_size: (width, height) of the thumbnail (PIL order).
    downsample: level-0 pixels per thumbnail pixel, one number or (dx, dy).
    Returns (height, width) float32: the mean score of the patches covering each pixel, NaN
    where no patch lies. Every patch covers at least one pixel, however small it is.
    """
    width, height = int(thumb_size[0]), int(thumb_size[1])
    dx, dy = (float(downsample), float(downsample)) if np.isscalar(downsample) else map(float, downsample)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(coords) != len(scores):
        raise ValueError(f"{len(coords)} coords but {len(scores)} scores")
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.int32)
    x0 = np.floor(coords[:, 0] / dx).astype(int)
    y0 = np.floor(coords[:, 1] / dy).astype(int)
    x1 = np.maximum(np.ceil((coords[:, 0] + patch_size) / dx).astype(int), x0 + 1)
    y1 = np.maximum(np.ceil((coords[:, 1] + patch_size) / dy).astype(int), y0 + 1)
    for a, b, c, d, s in zip(np.clip(x0, 0, width), np.clip(y0, 0, height),
                             np.clip(x1, 0, width), np.clip(y1, 0, height), scores):
        total[b:d, a:c] += s
        count[b:d, a:c] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        heat = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return heat.astype(np.float32)


def blend_heatmap(thumbnail: Union[Image.Image, np.ndarray], heat: np.ndarray, *,
                  alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Overlay a (H, W) heat grid (NaN = no tissue) on the thumbnail → RGB image (W×H).
    Heat is scaled to [0, 1] by its maximum, coloured with a matplotlib colormap, and
    alpha-blended where defined; uncovered pixels show the thumbnail unchanged."""
    import matplotlib

    base = thumbnail if isinstance(thumbnail, Image.Image) else Image.fromarray(np.asarray(thumbnail, dtype=np.uint8))
    base = base.convert("RGB")
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (base.height, base.width):
        raise ValueError(f"heat {heat.shape} does not match the thumbnail (H, W) = {(base.height, base.width)}")
    covered = np.isfinite(heat)
    peak = float(np.nanmax(heat)) if covered.any() else 0.0
    norm = np.where(covered, heat, 0.0) / peak if peak > 0 else np.zeros_like(heat)
    colours = matplotlib.colormaps[cmap](np.clip(norm, 0.0, 1.0))[..., :3] * 255.0
    rgb = np.asarray(base, dtype=np.float32)
    a = np.where(covered, alpha, 0.0)[..., None]
    return Image.fromarray(np.round(rgb * (1 - a) + colours * a).astype(np.uint8), "RGB")


def evidence_png_bytes(thumbnail: Union[Image.Image, np.ndarray], coords: np.ndarray, patch_size: float,
                       scores: np.ndarray, downsample: Downsample, *, alpha: float = 0.5,
                       cmap: str = "jet") -> bytes:
    """Rasterise + blend + encode: the PNG bytes of one entity's evidence map."""
    import io

    base = thumbnail if isinstance(thumbnail, Image.Image) else Image.fromarray(np.asarray(thumbnail, dtype=np.uint8))
    heat = rasterize_patch_scores(coords, patch_size, scores, base.size, downsample)
    buf = io.BytesIO()
    blend_heatmap(base, heat, alpha=alpha, cmap=cmap).save(buf, format="PNG")
    return buf.getvalue()
