"""Several image scales of one slide: the whole-slide thumbnail and regions of interest
cut from it (the paper's "various image scales").

ROIs are squares of `roi_patches × roi_patches` grid patches centred on tissue patches
chosen by farthest-point sampling over the tissue coordinates, starting from the patch
nearest the tissue centroid, so they are deterministic and spread over the tissue.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pathreasoner_jax.slides.tiling import TilingPlan, read_thumbnail, to_rgb


@dataclass
class View:
    """One image of the slide: level-0 box (x, y, size_x, size_y) and the RGB pixels."""
    kind: str  # "slide" | "roi"
    box: tuple[int, int, int, int]
    image: np.ndarray


def farthest_points(points_n2: np.ndarray, k: int) -> list[int]:
    """Indices of k points by farthest-point sampling, starting nearest the centroid."""
    pts = np.asarray(points_n2, np.float64)
    if len(pts) == 0 or k <= 0:
        return []
    first = int(np.argmin(((pts - pts.mean(0)) ** 2).sum(1)))
    chosen = [first]
    d = ((pts - pts[first]) ** 2).sum(1)
    while len(chosen) < min(k, len(pts)):
        nxt = int(np.argmax(d))
        if d[nxt] <= 0:
            break
        chosen.append(nxt)
        d = np.minimum(d, ((pts - pts[nxt]) ** 2).sum(1))
    return chosen


def multiscale_views(slide, plan: TilingPlan, thumb_size: int = 1024, num_rois: int = 4,
                     roi_patches: int = 4, roi_size: int = 512) -> list[View]:
    """[whole-slide thumbnail (longest side thumb_size), num_rois ROIs (roi_size px)]."""
    w0, h0 = plan.level0_size
    ds = max(w0, h0) / float(thumb_size)
    views = [View("slide", (0, 0, w0, h0), read_thumbnail(slide, max(ds, 1.0)))]
    side0 = plan.patch_size_level0 * roi_patches
    centres = plan.coords + plan.patch_size_level0 // 2
    for i in farthest_points(centres, num_rois):
        cx, cy = centres[i]
        x = int(np.clip(cx - side0 // 2, 0, max(w0 - side0, 0)))
        y = int(np.clip(cy - side0 // 2, 0, max(h0 - side0, 0)))
        level = slide.get_best_level_for_downsample(max(side0 / roi_size, 1.0) * 1.001)
        n = max(1, int(round(side0 / slide.level_downsamples[level])))
        img = to_rgb(slide.read_region((x, y), level, (n, n)))
        if img.shape[0] != roi_size:
            img = np.asarray(Image.fromarray(img).resize((roi_size, roi_size), Image.BILINEAR))
        views.append(View("roi", (x, y, side0, side0), img))
    return views
