"""Evidence maps: which slide regions support a KG entity, drawn over the slide thumbnail.

Attribution is occlusion by pseudo-bag cluster (the same Δ as SPEC §5's entity-drop prior):
remove one cluster's patches, re-score, and read the drop. We use occlusion rather than
gradients because (1) it measures the model's actual output change when the evidence is
gone, not a local linearisation that saturates through softmax/attention; (2) it reuses the
Δ machinery the prior already needs, at K+1 forward passes per entity (K = 8 clusters);
(3) clusters are morphologically coherent regions, which is the granularity a pathologist
reads. Its resolution is the cluster, not the patch.

The report shows the signed drop Δ_c itself (nats of the entity's log-likelihood): Δ > 0 means
hiding the cluster lowers the model's support (the region supports the entity), Δ < 0 that
hiding it raises it (the region speaks against). It is drawn in a diverging colour map centred
at 0 whose opacity grows with |Δ|, so the tissue stays visible where evidence is weak.

Everything here is pure numpy/pillow; the model-specific `score_fn` comes from the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

Downsample = Union[float, Sequence[float]]

# Moreland's cool-warm: a diverging map built in a perceptual colour space (CIELAB/Msh), with
# equal lightness at both ends and a light neutral grey at 0 (blue = against, red = supports).
DIVERGING_CMAP = "coolwarm"
MAX_ALPHA = 0.55  # opacity at |Δ| = vmax (tissue still shows through); lower |Δ| fades linearly to none


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


def signed_patch_evidence(drops: dict[int, float], cluster_ids: np.ndarray) -> np.ndarray:
    """(N,) float32: the signed drop Δ (nats) of each patch's cluster; 0 for unknown clusters."""
    cluster_ids = np.asarray(cluster_ids)
    out = np.zeros(cluster_ids.shape, dtype=np.float32)
    for c, d in drops.items():
        out[cluster_ids == c] = d
    return out


def symmetric_range(drops: dict[int, float]) -> float:
    """vmax of the colour scale ±vmax: the largest |Δ|; 0 when every Δ is 0 (no evidence)."""
    finite = [abs(d) for d in drops.values() if np.isfinite(d)]
    return float(max(finite, default=0.0))


def diverging_rgba(values: np.ndarray, vmax: float, cmap: str = DIVERGING_CMAP,
                   max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """values (...) signed → (..., 4) float: RGB in [0, 255] from `cmap` at 0.5 + v/(2·vmax)
    (0 → the map's neutral centre cmap(0.5)), alpha = max_alpha·|v|/vmax in [0, max_alpha].
    NaN (no patch) and vmax = 0 give alpha 0."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    t = np.clip(np.where(finite, v, 0.0) / vmax, -1.0, 1.0) if vmax > 0 else np.zeros_like(v)
    rgba = np.asarray(matplotlib.colormaps[cmap](0.5 + 0.5 * t), dtype=np.float64)
    rgba[..., :3] *= 255.0
    rgba[..., 3] = np.where(finite, max_alpha * np.abs(t), 0.0)
    return rgba


def _as_rgb(image: Union[Image.Image, np.ndarray]) -> Image.Image:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return img.convert("RGB")


def blend_heatmap(thumbnail: Union[Image.Image, np.ndarray], heat: np.ndarray, *, vmax: Optional[float] = None,
                  cmap: str = DIVERGING_CMAP, max_alpha: float = MAX_ALPHA) -> Image.Image:
    """Overlay a signed (H, W) heat grid (NaN = no patch) on the thumbnail → RGB image (W×H).
    vmax: the colour scale is ±vmax (default max |heat|). Opacity scales with |heat|/vmax
    (see `diverging_rgba`): weak evidence leaves the tissue as it is, not a flat wash."""
    base = _as_rgb(thumbnail)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (base.height, base.width):
        raise ValueError(f"heat {heat.shape} does not match the thumbnail (H, W) = {(base.height, base.width)}")
    if vmax is None:
        vmax = float(np.nanmax(np.abs(heat))) if np.isfinite(heat).any() else 0.0
    rgba = diverging_rgba(heat, vmax, cmap, max_alpha)
    a = rgba[..., 3:4]
    rgb = np.asarray(base, dtype=np.float64)
    return Image.fromarray(np.round(rgb * (1 - a) + rgba[..., :3] * a).astype(np.uint8), "RGB")


def evidence_png_bytes(thumbnail: Union[Image.Image, np.ndarray], coords: np.ndarray, patch_size: float,
                       scores: np.ndarray, downsample: Downsample, *, vmax: Optional[float] = None,
                       cmap: str = DIVERGING_CMAP) -> bytes:
    """Rasterise + blend + encode: the PNG bytes of one entity's evidence map.
    scores: (N,) signed per-patch evidence (e.g. `signed_patch_evidence`)."""
    import io

    base = _as_rgb(thumbnail)
    heat = rasterize_patch_scores(coords, patch_size, scores, base.size, downsample)
    buf = io.BytesIO()
    blend_heatmap(base, heat, vmax=vmax, cmap=cmap).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- top regions

@dataclass
class Region:
    """One top evidence region: a window of `context`² patches (level-0 box x, y, w, h) around
    the most typical patch (patch_x, patch_y, side patch_size) of a supporting cluster."""
    rank: int
    cluster: int
    drop: float      # Δ of the cluster, nats (> 0: supports)
    share: float     # Δ over the sum of positive Δ: the cluster's share of the support
    x: int
    y: int
    w: int
    h: int
    patch_x: int
    patch_y: int
    patch_size: int
    crop: object = None  # the zoomed image, set by the caller (ImageLike)


def _typical_patch(coords: np.ndarray, patch_size: float, limit: int = 2000) -> int:
    """Index of the member with the most cluster-mates within 1.5 patch sides (the densest
    spot of a cluster that may be scattered); at most `limit` candidates, evenly spaced."""
    cand = np.linspace(0, len(coords) - 1, min(len(coords), limit)).astype(int)
    d = np.abs(coords[cand, None, :] - coords[None, :, :]).max(-1)  # Chebyshev, (C, N)
    return int(cand[np.argmax((d <= 1.5 * patch_size).sum(1))])


def top_regions(coords: np.ndarray, patch_size: float, cluster_ids: np.ndarray, drops: dict[int, float],
                k: int = 3, context: int = 3, extent: Optional[tuple[int, int]] = None) -> list[Region]:
    """The k clusters with the largest positive Δ, each as a Region (best first).

    coords: (N, 2) level-0 top-left corners; cluster_ids: (N,); drops: {cluster: Δ}.
    context: window side in patches; extent: level-0 (width, height) to keep windows inside.
    Clusters with Δ ≤ 0 are never shown as support: fewer than k regions, or none, may return.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    cluster_ids = np.asarray(cluster_ids)
    total = sum(d for d in drops.values() if d > 0)
    ranked = sorted((c for c, d in drops.items() if d > 0 and (cluster_ids == c).any()), key=lambda c: -drops[c])
    side = int(round(context * patch_size))
    regions = []
    for rank, c in enumerate(ranked[:k], start=1):
        members = coords[cluster_ids == c]
        px, py = members[_typical_patch(members, patch_size)]
        x = int(round(px - (context - 1) / 2 * patch_size))
        y = int(round(py - (context - 1) / 2 * patch_size))
        if extent is not None:
            x, y = min(x, int(extent[0]) - side), min(y, int(extent[1]) - side)
        regions.append(Region(rank, int(c), float(drops[c]), float(drops[c] / total), max(x, 0), max(y, 0),
                              side, side, int(px), int(py), int(round(patch_size))))
    return regions
