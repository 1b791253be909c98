"""Tissue segmentation at low resolution (SPEC §4).

HSV saturation (stained tissue is coloured, glass and background are grey/white),
Otsu threshold, morphological closing, hole filling, then removal of components
smaller than a minimum area. A floor on the threshold keeps an empty (all-white)
slide from being split into "tissue" by Otsu on pure noise.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def saturation(rgb_hw3: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) uint8 HSV saturation, 255·(max−min)/max."""
    rgb = rgb_hw3.astype(np.int32)
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    s = np.where(mx > 0, (255 * (mx - mn)) // np.maximum(mx, 1), 0)
    return s.astype(np.uint8)


def otsu_threshold(values_u8: np.ndarray) -> int:
    """Otsu's threshold on uint8 values: the t maximising between-class variance of
    {v ≤ t} and {v > t}."""
    hist = np.bincount(values_u8.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return int(np.argmax(between))


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 0)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy) <= r * r


def tissue_mask(rgb_hw3: np.ndarray, min_saturation: int = 20, close_radius: int = 2,
                min_area_frac: float = 0.0005, min_area_px: int = 16) -> np.ndarray:
    """(H, W, 3) uint8 thumbnail → (H, W) bool tissue mask.

    min_saturation: lower bound on the Otsu threshold (0–255); components smaller than
    max(min_area_px, min_area_frac·H·W) thumbnail pixels are dropped.
    """
    s = saturation(rgb_hw3)
    thr = max(otsu_threshold(s), int(min_saturation))
    mask = s > thr
    if close_radius > 0:
        # pad so that closing does not erase tissue touching the border
        pad = close_radius + 1
        m = np.pad(mask, pad)
        m = ndimage.binary_closing(m, structure=_disk(close_radius))
        mask = m[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        min_area = max(int(min_area_px), int(min_area_frac * mask.size))
        keep = sizes >= min_area
        keep[0] = False
        mask = keep[labels]
    return mask
