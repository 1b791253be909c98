"""Procedural H&E-like slides of four tissue classes (and two focal textures), written as pyramidal tiled TIFF.

The textures are caricatures, not histology: what matters is that each class has its
own colour balance and structure (round glands with a nuclear rim, crowded irregular
glands with dark nuclei, pink sheets with concentric keratin pearls, dense small dark
nuclei) so that the `demo` patch encoder can tell them apart, and that the slides go
through the same OpenSlide path as real ones (generic tiled TIFF, several levels,
resolution tags → mpp).
"""
from __future__ import annotations

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("normal_mucosa", "adenocarcinoma", "squamous_cell_carcinoma", "lymphoid")
BACKGROUND = (242, 242, 244)


def _tissue_shape(size: tuple[int, int], rng: np.random.Generator, coverage: float) -> np.ndarray:
    """(H, W) bool blob: smooth noise plus a centred ellipse, thresholded to ~coverage
    (built at 1/8 resolution and upsampled: the outline only needs to be smooth)."""
    w, h = size
    sw, sh = max(8, w // 8), max(8, h // 8)
    noise = Image.fromarray(rng.random((12, 12)).astype(np.float32), mode="F")
    yy, xx = np.mgrid[0:sh, 0:sw]
    ell = 1.0 - (((xx - sw / 2) / (sw / 2)) ** 2 + ((yy - sh / 2) / (sh / 2)) ** 2)
    field = np.asarray(noise.resize((sw, sh), Image.BICUBIC)) * 0.6 + ell
    thr = np.quantile(field, 1.0 - coverage)
    big = Image.fromarray(field.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(big) > thr


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r


def _stamp(canvas: np.ndarray, xs, ys, radius: int, colour) -> None:
    """Paints discs of `radius` at (xs, ys), vectorised over points (one pass per disc offset)."""
    h, w = canvas.shape[:2]
    xi = np.asarray(xs, int)
    yi = np.asarray(ys, int)
    hit = np.zeros((h, w), bool)
    for dy, dx in np.argwhere(_disk(radius)) - radius:
        hit[np.clip(yi + dy, 0, h - 1), np.clip(xi + dx, 0, w - 1)] = True
    canvas[hit] = colour


def _scatter(canvas, rng, n, radii, colour) -> None:
    h, w = canvas.shape[:2]
    for r in radii:  # a few integer radii stand in for a size distribution
        k = n // len(radii)
        _stamp(canvas, rng.uniform(0, w, k), rng.uniform(0, h, k), r, colour)


def _glands(canvas, rng, centres, radius_range, irregular, nucleus_colour, nucleus_r, lumen):
    """Lumens as polygons (PIL), nuclear rims as stamped discs along each outline."""
    img = Image.fromarray(canvas)
    d = ImageDraw.Draw(img)
    rim_x, rim_y = [], []
    k = 14
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
    for cx, cy in centres:
        r = rng.uniform(*radius_range)
        rad = r * (1 + (rng.uniform(-0.35, 0.35, k) if irregular else rng.uniform(-0.05, 0.05, k)))
        d.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(rad, ang)], fill=lumen)
        n = int(2 * np.pi * r / (nucleus_r * (1.6 if irregular else 2.2)))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        a = np.interp(t, np.append(ang, 2 * np.pi), np.append(rad, rad[0]))
        rim_x.append(cx + a * np.cos(t))
        rim_y.append(cy + a * np.sin(t))
    canvas[...] = np.asarray(img)
    if rim_x:
        _stamp(canvas, np.concatenate(rim_x), np.concatenate(rim_y), nucleus_r, nucleus_colour)


def render(cls: str, size: tuple[int, int], rng: np.random.Generator, coverage: float = 0.5,
           focal: tuple[str, float] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 slide image of tissue class `cls` at 20× (≈ 0.5 µm/px).

    focal: (texture, fraction): one round focus of another texture (a class of CLASSES or
    one of FOCAL_TEXTURES) covering about that fraction of the tissue, at a random place
    (the harder demo task's distinguishing findings, `data_prep/demo/hard.py`)."""
    arr = _texture(cls, size, rng)
    mask = _tissue_shape(size, rng, coverage)
    if focal is not None:
        kind, fraction = focal
        arr = np.where(_focus(mask, rng, fraction)[..., None], _texture(kind, size, rng), arr)
    out = np.where(mask[..., None], arr, np.asarray(BACKGROUND, np.int16))
    return np.clip(out, 0, 255).astype(np.uint8)


FOCAL_TEXTURES = ("dysplasia", "mucin")


def _focus(tissue_hw: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """(H, W) bool disc inside the tissue of ≈ fraction of its area, centred on a tissue pixel."""
    ys, xs = np.nonzero(tissue_hw)
    if ys.size == 0:
        return tissue_hw
    k = int(rng.integers(ys.size))
    r = np.sqrt(fraction * ys.size / np.pi)
    h, w = tissue_hw.shape
    yy, xx = np.ogrid[0:h, 0:w]
    return tissue_hw & ((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2 <= r * r)


def _texture(cls: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) int16 tissue texture of `cls` over the whole canvas (before the tissue mask)."""
    w, h = size
    stroma = {"normal_mucosa": (236, 178, 206), "adenocarcinoma": (214, 150, 186),
              "squamous_cell_carcinoma": (232, 138, 166), "lymphoid": (200, 170, 215),
              "dysplasia": (230, 170, 200), "mucin": (204, 210, 234)}[cls]
    c = np.empty((h, w, 3), np.uint8)
    c[...] = stroma
    area = w * h
    if cls == "normal_mucosa":
        step = 110
        gy, gx = np.mgrid[step // 2:h:step, step // 2:w:step]
        centres = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-8, 8, (gx.size, 2))
        _glands(c, rng, centres, (32, 36), False, (96, 64, 150), 4, (248, 240, 246))
        _scatter(c, rng, area // 3000, (2, 3), (120, 90, 170))
    elif cls == "adenocarcinoma":
        n = area // 5500
        centres = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1)
        _glands(c, rng, centres, (18, 40), True, (64, 34, 112), 5, (236, 214, 230))
        _scatter(c, rng, area // 9000, (2,), (200, 120, 170))  # necrotic debris
        _scatter(c, rng, area // 900, (2, 3, 4), (110, 70, 150))
    elif cls == "squamous_cell_carcinoma":
        _scatter(c, rng, area // 450, (3, 4, 5), (130, 72, 150))
        img = Image.fromarray(c)
        d = ImageDraw.Draw(img)
        for _ in range(area // 60000 + 2):  # keratin pearls: concentric pink/orange whorls
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(30, 70)
            for i, rr in enumerate(np.linspace(r, 4, 7)):
                d.ellipse((cx - rr, cy - rr * 0.8, cx + rr, cy + rr * 0.8),
                          fill=(246, 112, 132) if i % 2 == 0 else (250, 190, 170))
        c = np.asarray(img).copy()
    elif cls == "lymphoid":  # dense small dark nuclei with pale germinal centres
        img = Image.fromarray(c)
        d = ImageDraw.Draw(img)
        for _ in range(area // 400000 + 1):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(80, 160)
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(214, 190, 222))
        c = np.asarray(img).copy()
        _scatter(c, rng, area // 55, (2, 3, 4), (52, 30, 112))
    elif cls == "dysplasia":  # crowded small crypts with dark, stratified nuclei
        step = 56
        gy, gx = np.mgrid[step // 2:h:step, step // 2:w:step]
        centres = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-10, 10, (gx.size, 2))
        _glands(c, rng, centres, (14, 20), True, (58, 30, 108), 5, (246, 236, 244))
        _scatter(c, rng, area // 1500, (3,), (80, 50, 130))
    else:  # mucin: pale blue-grey lakes with a few floating strips of tumour cells
        n = area // 40000 + 1
        centres = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1)
        _glands(c, rng, centres, (10, 22), True, (70, 40, 120), 4, (214, 220, 240))
        _scatter(c, rng, area // 6000, (2,), (150, 150, 200))
    img = Image.fromarray(c).filter(ImageFilter.BoxBlur(1))
    arr = np.asarray(img).astype(np.int16)
    return arr + rng.integers(-6, 7, size=(h, w, 1), dtype=np.int16)  # stain/illumination grain


def write_pyramid_tiff(path: str, level0_hw3: np.ndarray, mpp: float | None, levels: int = 3,
                       tile: int = 256, compression: str = "jpeg") -> None:
    """Tiled pyramidal TIFF OpenSlide reads as generic-tiff: one full-resolution page
    then reduced pages (halving), resolution tags in pixels/cm so OpenSlide derives mpp."""
    kw = dict(tile=(tile, tile), photometric="rgb", compression=compression)
    if compression == "jpeg":
        kw["compressionargs"] = {"level": 90}
    if mpp:
        kw.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        tw.write(level0_hw3, subfiletype=0, **kw)
        img = level0_hw3
        for _ in range(1, levels):
            if min(img.shape[:2]) < 2 * tile:
                break
            h, w = img.shape[0] // 2, img.shape[1] // 2
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
            if mpp:
                mpp *= 2
                kw.update(resolution=(1e4 / mpp, 1e4 / mpp))
            tw.write(img, subfiletype=1, **kw)
