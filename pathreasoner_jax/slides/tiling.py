"""Tiling a slide at a target magnification and patch size (SPEC §4).

The grid is laid out at level 0 with step `patch_size_level0 = patch_size · base/target`
(non-overlapping, full patches only); a patch is kept when at least `min_tissue` of
its area is tissue in the low-resolution mask. Patches are read from the best pyramid
level for the target magnification (the coarsest level that is still at least as fine)
and resized to the output size; coordinates stay at level 0, (x, y) of the top-left
corner, as TRIDENT and CLAM store them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pathreasoner_jax.core.errors import one_line
from pathreasoner_jax.slides.reader import SlideError, slide_magnification
from pathreasoner_jax.slides.tissue import tissue_mask

log = logging.getLogger(__name__)


@dataclass
class TilingPlan:
    """Where to read the patches of one slide.

    coords_n2: (N, 2) int64 level-0 (x, y); level / read_size: pyramid level and square
    size read there; patch_size: size of the patches after resizing (at the target
    magnification); mask_hw: the tissue mask at `mask_downsample` level-0 px per pixel.
    """
    path: str
    coords: np.ndarray
    level: int
    read_size: int
    patch_size: int
    patch_size_level0: int
    base_magnification: float
    magnification_source: str
    target_magnification: float
    tissue_fraction: float
    mask: np.ndarray
    mask_downsample: float
    level0_size: tuple[int, int]


# A slide scanned below a quarter of the target magnification is refused, not upsampled.
MIN_DOWNSAMPLE = 0.25


def read_thumbnail(slide, downsample: float) -> np.ndarray:
    """(H/ds, W/ds, 3) uint8 RGB view of the whole slide, background made white."""
    w0, h0 = slide.dimensions
    size = (max(1, round(w0 / downsample)), max(1, round(h0 / downsample)))
    level = slide.get_best_level_for_downsample(downsample * 1.001)
    assoc = slide.associated_images.get("thumbnail") if "thumbnail" in slide.associated_images else None
    lw, lh = slide.level_dimensions[level]
    # a vendor thumbnail of the same aspect ratio, finer than needed but much smaller than
    # the best pyramid level (single-level scans), saves decoding the whole slide
    if assoc is not None and assoc.width >= size[0] and assoc.width * assoc.height < lw * lh \
            and abs(assoc.width / assoc.height - w0 / h0) < 0.01 * (w0 / h0):
        return np.asarray(Image.fromarray(to_rgb(assoc)).resize(size, Image.BILINEAR))
    img = to_rgb(slide.read_region((0, 0), level, (lw, lh)))
    if (lw, lh) != size:
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    return img


def to_rgb(region) -> np.ndarray:
    """RGBA PIL image from OpenSlide → (H, W, 3) uint8 composited over white
    (transparent = outside the scanned area, which is background, not tissue)."""
    a = np.asarray(region)
    if a.ndim == 3 and a.shape[-1] == 4:
        if a[..., 3].min() == 255:  # fully opaque: the common case inside the scan area
            return np.ascontiguousarray(a[..., :3])
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        return (a[..., :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.asarray(region.convert("RGB"))


def plan_tiles(slide, path: str, target_magnification: float = 20.0, patch_size: int = 256,
               default_magnification: float | None = 20.0, min_tissue: float = 0.25) -> TilingPlan:
    """Tissue mask + patch grid for one open slide. Raises SlideError when no patch
    has enough tissue or a read fails."""
    base, source = slide_magnification(slide, path, default_magnification)
    ds = base / target_magnification
    if ds < MIN_DOWNSAMPLE:
        raise SlideError(f"{path}: scanned at {base:g}× ({source}), far below the target {target_magnification:g}×; "
                         f"upsampling {1 / ds:.0f}× would invent detail (the limit is "
                         f"{1 / MIN_DOWNSAMPLE:g}×; lower data.target_magnification / --magnification)")
    if ds < 1.0:
        log.warning("%s: scanned at %g×, below the target %g×; patches are upsampled",
                    path, base, target_magnification)
    ps0 = max(1, int(round(patch_size * ds)))
    w0, h0 = slide.dimensions
    mask_ds = max(ps0 / 16.0, max(w0, h0) / 4096.0, 1.0)  # ≥ 16 mask px across a patch
    try:
        mask = tissue_mask(read_thumbnail(slide, mask_ds))
        level = slide.get_best_level_for_downsample(max(ds, 1.0) * 1.001)
    except Exception as e:  # openslide errors on corrupt tiles
        raise SlideError(f"{path}: reading the slide failed ({one_line(e)})") from None
    tissue_fraction = float(mask.mean()) if mask.size else 0.0
    xs = np.arange(0, w0 - ps0 + 1, ps0, dtype=np.int64)
    ys = np.arange(0, h0 - ps0 + 1, ps0, dtype=np.int64)
    coords = np.zeros((0, 2), np.int64)
    if len(xs) and len(ys):
        frac = _patch_tissue_fraction(mask, mask_ds, xs, ys, ps0)  # (len(ys), len(xs))
        yy, xx = np.nonzero(frac >= min_tissue)
        coords = np.stack([xs[xx], ys[yy]], axis=1).astype(np.int64)  # row-major: y then x
    if len(coords) == 0:
        raise SlideError(f"{path}: no tissue found (tissue fraction {tissue_fraction:.3f}; "
                         f"no {patch_size}px patch at {target_magnification:g}× is ≥ {min_tissue:.0%} tissue)")
    read_size = max(1, int(round(ps0 / slide.level_downsamples[level])))
    return TilingPlan(path=path, coords=coords, level=level, read_size=read_size, patch_size=patch_size,
                      patch_size_level0=ps0, base_magnification=base, magnification_source=source,
                      target_magnification=target_magnification, tissue_fraction=tissue_fraction,
                      mask=mask, mask_downsample=mask_ds, level0_size=(w0, h0))


def _patch_tissue_fraction(mask: np.ndarray, ds: float, xs: np.ndarray, ys: np.ndarray, ps0: int) -> np.ndarray:
    """Fraction of mask pixels inside each grid patch, via an integral image."""
    h, w = mask.shape
    ii = np.zeros((h + 1, w + 1), np.int64)
    ii[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), 0), 1)
    x0 = np.clip(np.floor(xs / ds).astype(int), 0, w)
    x1 = np.clip(np.maximum(np.ceil((xs + ps0) / ds).astype(int), x0 + 1), 0, w)
    y0 = np.clip(np.floor(ys / ds).astype(int), 0, h)
    y1 = np.clip(np.maximum(np.ceil((ys + ps0) / ds).astype(int), y0 + 1), 0, h)
    s = ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0]
    area = np.maximum((y1 - y0)[:, None] * (x1 - x0)[None, :], 1)
    return s / area


def read_patch(slide, plan: TilingPlan, xy, out_size: int | None = None) -> np.ndarray:
    """(out, out, 3) uint8 patch at level-0 `xy`, read at plan.level and resized."""
    out = out_size or plan.patch_size
    region = slide.read_region((int(xy[0]), int(xy[1])), plan.level, (plan.read_size, plan.read_size))
    img = to_rgb(region)
    if img.shape[0] != out:
        img = np.asarray(Image.fromarray(img).resize((out, out), Image.BILINEAR))
    return img


def grid_shape(plan: TilingPlan) -> tuple[int, int]:
    """(rows, cols) of the full level-0 patch grid (for evidence maps)."""
    w0, h0 = plan.level0_size
    return math.ceil(h0 / plan.patch_size_level0), math.ceil(w0 / plan.patch_size_level0)
