"""The images of `report.html` besides the thumbnail: evidence overlays with their numbered top
regions, the colour bar, zoomed crops of the top regions, and the µm scale bar's geometry.

`build_entity_evidence` turns one entity's cluster drops Δ into an `EntityEvidence` — what
`write_report` needs to draw that entity — so the report can be built (and tested) from
plain arrays without a model.
"""
from __future__ import annotations

import base64
import io
import math
import os
import shutil
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pathreasoner_jax.core.io import atomic_path, write_bytes
from pathreasoner_jax.eval.evidence import (
    DIVERGING_CMAP, Region, blend_heatmap, diverging_rgba, rasterize_patch_scores, signed_patch_evidence,
    symmetric_range, top_regions)

ImageLike = Union[str, bytes, Image.Image, np.ndarray]
CROP_PX = 256  # side of a zoomed crop in the page
# a crop reader: (level-0 box x, y, w, h, output side in px) → (side, side, 3) uint8
CropFn = Callable[[int, int, int, int, int], np.ndarray]


@dataclass
class EntityEvidence:
    """One entity's evidence map, as `write_report` draws it.

    overlay: the map over the thumbnail (ImageLike, same size as the thumbnail).
    vmax: the colour scale is ±vmax nats (0: every Δ is 0).
    drops: {cluster: Δ nats}; regions: the top supporting regions, best first, with crops.
    crop_source: "slide" (read from the slide file) | "thumbnail" (enlarged thumbnail) | "".
    """
    overlay: object
    vmax: float
    drops: dict
    regions: list = field(default_factory=list)
    crop_source: str = ""

    @property
    def support(self) -> float:
        """Σ positive Δ (nats): how much the regions together support the entity."""
        return float(sum(d for d in self.drops.values() if d > 0))

    @property
    def against(self) -> float:
        """Σ negative Δ (nats, ≤ 0): how much regions speak against it."""
        return float(sum(d for d in self.drops.values() if d < 0))

    @property
    def n_supporting(self) -> int:
        return sum(d > 0 for d in self.drops.values())


# ---------------------------------------------------------------- placing images in the page

def png_bytes(image: Union[bytes, Image.Image, np.ndarray]) -> bytes:
    """PNG-encoded bytes of an in-memory image ((H, W, 3) uint8 array, PIL image or bytes as is)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_size(image: ImageLike) -> tuple[int, int]:
    """(width, height) of any ImageLike."""
    if isinstance(image, np.ndarray):
        return int(image.shape[1]), int(image.shape[0])
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as img:
        return img.size


def place_image(image: ImageLike, out_dir: str, default_name: str, embed: bool) -> str:
    """Return the `src` for an image: a data: URI (embed), or a URL-quoted file name in
    `out_dir` (a file elsewhere is copied in; an in-memory image is written as PNG)."""
    if isinstance(image, str):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"report image not found: {image}")
        if embed:
            mime = "image/png" if image.lower().endswith(".png") else "image/jpeg"
            with open(image, "rb") as f:
                return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"
        name = os.path.basename(image)
        if os.path.abspath(os.path.dirname(image)) != os.path.abspath(out_dir):
            # Copied under our own name: two source folders may both hold a "heatmap.png".
            name = os.path.splitext(default_name)[0] + os.path.splitext(image)[1].lower()
            with atomic_path(os.path.join(out_dir, name)) as tmp:
                shutil.copyfile(image, tmp)
        return urllib.parse.quote(name)
    data = png_bytes(image)
    if embed:
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    write_bytes(os.path.join(out_dir, default_name), data)
    return urllib.parse.quote(default_name)


# ---------------------------------------------------------------- scale bar

@dataclass
class ScaleBar:
    """A bar `um` µm long = `px` image pixels = `fraction` of the image width."""
    um: float
    px: float
    fraction: float
    label: str


def _um_label(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def scale_bar(mpp: Optional[float], downsample: float, image_width: int, target: float = 0.2) -> Optional[ScaleBar]:
    """The longest 1-2-5 × 10^k µm bar no longer than `target` of the image width, or None
    when the slide's µm per level-0 pixel (mpp) is unknown.

    downsample: level-0 pixels per image pixel, so one image pixel is mpp·downsample µm.
    """
    if not mpp or mpp <= 0 or not math.isfinite(mpp) or downsample <= 0 or image_width <= 0:
        return None
    um_per_px = float(mpp) * float(downsample)
    want = target * image_width * um_per_px
    exp = math.floor(math.log10(want))
    um = max(m * 10.0 ** exp for m in (1, 2, 5) if m * 10.0 ** exp <= want)
    um = float(f"{um:.6g}")  # 0.1·5 → 0.5, not 0.5000000000000001
    px = um / um_per_px
    return ScaleBar(um, px, px / image_width, _um_label(um))


# ---------------------------------------------------------------- colour bar and overlays

def colorbar_image(width: int = 257, height: int = 14, cmap: str = DIVERGING_CMAP) -> Image.Image:
    """(height, width) RGB gradient from −vmax (left) through 0 (the centre column, exactly
    cmap(0.5) for an odd width) to +vmax (right), drawn opaque."""
    t = np.linspace(-1.0, 1.0, width)
    rgb = diverging_rgba(t, 1.0, cmap)[..., :3]
    return Image.fromarray(np.round(np.repeat(rgb[None], height, 0)).astype(np.uint8), "RGB")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def outline_box(draw: ImageDraw.ImageDraw, box: Sequence[float], width: int = 2) -> None:
    """A black box inside a white one: visible on pale tissue and on saturated colours."""
    x0, y0, x1, y1 = box
    draw.rectangle((x0 - width, y0 - width, x1 + width, y1 + width), outline=(255, 255, 255), width=width)
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=width)


def annotate_regions(image: Image.Image, regions: Sequence[Region], downsample: float) -> Image.Image:
    """Number each region's box on the overlay (level-0 boxes / downsample), so the crops
    below the map can be found on it."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = _font(max(10, out.width // 45))
    for r in regions:
        box = (r.x / downsample, r.y / downsample, (r.x + r.w) / downsample, (r.y + r.h) / downsample)
        outline_box(draw, box, width=max(1, out.width // 400))
        draw.text((box[0] + 3, box[1] + 1), str(r.rank), fill=(0, 0, 0), font=font,
                  stroke_width=2, stroke_fill=(255, 255, 255))
    return out


# ---------------------------------------------------------------- crops

def thumbnail_crop_fn(thumbnail: np.ndarray, downsample: float) -> CropFn:
    """Crops of the thumbnail (no slide file): the box / downsample, enlarged to the crop side."""
    img = Image.fromarray(np.asarray(thumbnail, dtype=np.uint8)).convert("RGB")

    def crop(x: int, y: int, w: int, h: int, side: int) -> np.ndarray:
        box = (x / downsample, y / downsample, (x + w) / downsample, (y + h) / downsample)
        return np.asarray(img.crop(tuple(int(round(v)) for v in box)).resize((side, side), Image.BICUBIC))
    return crop


def slide_crop_fn(slide) -> CropFn:
    """Crops read from an open OpenSlide slide at the pyramid level nearest the zoom."""
    from pathreasoner_jax.slides.tiling import to_rgb

    def crop(x: int, y: int, w: int, h: int, side: int) -> np.ndarray:
        level = slide.get_best_level_for_downsample(w / side)
        ds = slide.level_downsamples[level]
        size = (max(1, math.ceil(w / ds)), max(1, math.ceil(h / ds)))
        region = to_rgb(slide.read_region((int(x), int(y)), level, size))
        return np.asarray(Image.fromarray(region).resize((side, side), Image.LANCZOS))
    return crop


def region_crop(crop_fn: CropFn, r: Region, side: int = CROP_PX) -> Image.Image:
    """The region's zoomed image with its typical patch outlined."""
    img = Image.fromarray(np.asarray(crop_fn(r.x, r.y, r.w, r.h, side), dtype=np.uint8)).convert("RGB")
    sx, sy = side / r.w, side / r.h
    box = ((r.patch_x - r.x) * sx, (r.patch_y - r.y) * sy,
           (r.patch_x - r.x + r.patch_size) * sx, (r.patch_y - r.y + r.patch_size) * sy)
    outline_box(ImageDraw.Draw(img), box, width=2)
    return img


# ---------------------------------------------------------------- one entity

def build_entity_evidence(thumbnail: np.ndarray, coords: np.ndarray, patch_size: float, cluster_ids: np.ndarray,
                          drops: dict, downsample: float, *, crop_fn: Optional[CropFn] = None,
                          crop_source: str = "", k: int = 3,
                          extent: Optional[tuple[int, int]] = None) -> EntityEvidence:
    """Cluster drops → the entity's overlay (signed Δ, ±max|Δ|), numbered top-k regions and crops.

    thumbnail: (H, W, 3) uint8; coords: (N, 2) level-0; cluster_ids: (N,); drops: {cluster: Δ};
    downsample: level-0 px per thumbnail px; crop_fn: None → no crops (no slide image at all).
    """
    thumb = Image.fromarray(np.asarray(thumbnail, dtype=np.uint8)).convert("RGB")
    vmax = symmetric_range(drops)
    values = signed_patch_evidence(drops, cluster_ids)
    heat = rasterize_patch_scores(coords, patch_size, values, thumb.size, downsample)
    regions = top_regions(coords, patch_size, cluster_ids, drops, k=k, extent=extent)
    overlay = annotate_regions(blend_heatmap(thumb, heat, vmax=vmax), regions, downsample)
    for r in regions if crop_fn is not None else ():
        r.crop = region_crop(crop_fn, r)
    return EntityEvidence(overlay, vmax, dict(drops), regions, crop_source if crop_fn is not None else "")
