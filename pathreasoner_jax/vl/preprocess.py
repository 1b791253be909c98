"""Qwen2.5-VL image inputs in numpy, pixel for pixel as HF's `Qwen2VLImageProcessorPil`, and the
per-patch metadata the JAX vision tower needs, so the model never computes data-dependent shapes.

- `smart_resize` / `preprocess_image`: resize to a multiple of patch×merge (PIL bicubic), scale,
  normalise with the OpenAI CLIP mean/std, repeat the frame `temporal_patch_size` times and cut
  (P, patch_dim) patches in HF's block-major order (the m×m patches of a merged token adjacent).
- `vision_meta`: per patch its (row, col) and window id, per merged token its (t, h, w) rope offset.
- `pack_images`: a batch of rows (each with 0+ images) into fixed-shape (B, P, ·) arrays.
- `rope_index_reference`: a loop twin of HF `get_rope_index` for images, for the model's tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pathreasoner_jax.clip.preprocess import OPENAI_MEAN as OPENAI_CLIP_MEAN
from pathreasoner_jax.clip.preprocess import OPENAI_STD as OPENAI_CLIP_STD
from pathreasoner_jax.core.errors import UserError


@dataclass(frozen=True)
class VisionGeometry:
    """Qwen2.5-VL's patching constants (HF's image processor and vision config defaults)."""
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    window_size: int = 112
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    in_channels: int = 3

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        return self.merge_size ** 2

    @property
    def window_units(self) -> int:
        """Merged tokens per window side (HF's vit_merger_window_size)."""
        return self.window_size // self.merge_size // self.patch_size


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """HF's rule: (h, w) multiples of `factor`, h*w within [min_pixels, max_pixels], aspect kept."""
    if height < 1 or width < 1:
        raise UserError(f"image of {height}x{width} pixels: both sides must be at least 1")
    if max(height, width) / min(height, width) > 200:
        raise UserError(f"image of {height}x{width} pixels: absolute aspect ratio must be smaller than 200, "
                        f"got {max(height, width) / min(height, width)}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor  # Python's round, as HF
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _to_rgb(image) -> np.ndarray:
    """PIL image (any mode) or (H, W[, 1|3|4]) uint8 array → (H, W, 3) uint8, as HF's
    `convert_to_rgb`: transparency composited onto white, grey repeated to three channels."""
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.array(image.convert("RGB"))
    a = np.asarray(image)
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.dtype != np.uint8:
        raise UserError(f"expected a PIL image or an (H, W[, 1|3|4]) uint8 array, got {a.shape} {a.dtype}")
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:  # HF's numpy blend (float64, rounded), not PIL's integer one
        alpha = a[..., 3:4] / 255
        return np.round(alpha * a[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return a


def preprocess_image(image, geom: VisionGeometry = VisionGeometry()) -> tuple[np.ndarray, np.ndarray]:
    """One image → (pixel_values (P, patch_dim) float32, grid_thw (3,) int64), P = 1*h*w patches.

    Each row is (C, temporal, p, p) flattened; rows go merged-token by merged-token (HF order)."""
    if geom.in_channels != 3:
        raise UserError(f"in_channels={geom.in_channels}: images are RGB (3 channels)")
    rgb, p, m = _to_rgb(image), geom.patch_size, geom.merge_size
    rh, rw = smart_resize(rgb.shape[0], rgb.shape[1], p * m, geom.min_pixels, geom.max_pixels)
    resized = np.array(Image.fromarray(rgb).resize((rw, rh), Image.BICUBIC))
    # HF rescales in float64 then casts, and normalises in float32: the same ops give the same bits
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(OPENAI_CLIP_STD, np.float32)
    gh, gw = rh // p, rw // p
    x = x.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)  # (bh, bw, m, m, C, p, p)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (geom.temporal_patch_size, p, p))
    return np.ascontiguousarray(x.reshape(gh * gw, geom.patch_dim)), np.array([1, gh, gw], np.int64)


def _grid(grid_thw, merge_size: int) -> tuple[int, int, int]:
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
    if t < 1 or h < 1 or w < 1 or h % merge_size or w % merge_size:
        raise UserError(f"grid_thw ({t}, {h}, {w}): t, h, w must be positive and h, w multiples of "
                        f"merge_size {merge_size}")
    return t, h, w


def num_image_tokens(grid_thw, merge_size: int = 2) -> int:
    """Merged tokens (image placeholders in the text) of one image: t*h*w // merge_size²."""
    t, h, w = _grid(grid_thw, merge_size)
    return t * h * w // merge_size ** 2


def vision_meta(grid_thw, geom: VisionGeometry = VisionGeometry()) -> dict:
    """Per-patch and per-token indices of one image/video grid (P = t*h*w, Q = P // merge_unit).

    patch_hw (P, 2) int32: (row, col) of each patch (HF `get_vision_position_ids`);
    patch_window (P,) int32: window id, 0..t*ceil(h'/W)*ceil(w'/W)-1 (h' = h//m, W = window_units);
    token_thw (Q, 3) int32: (t, h', w') of each merged token (rope position minus its start);
    ext: the text position's advance past the image, max(h, w) // m."""
    m, wu = geom.merge_size, geom.window_units
    if wu < 1:
        raise UserError(f"window_size {geom.window_size} is below merge_size*patch_size {m * geom.patch_size}")
    t, h, w = _grid(grid_thw, m)
    lh, lw = h // m, w // m
    # merged tokens in HF order: frame, merged row, merged col; patches m×m inside each
    tt, th, tw = (g.reshape(-1) for g in np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij"))
    dh, dw = np.divmod(np.arange(m * m), m)
    patch_hw = np.stack([(th[:, None] * m + dh).reshape(-1), (tw[:, None] * m + dw).reshape(-1)], -1)
    nwh, nww = -(-lh // wu), -(-lw // wu)
    window = (tt * nwh + th // wu) * nww + tw // wu
    return {"patch_hw": patch_hw.astype(np.int32), "patch_window": np.repeat(window, m * m).astype(np.int32),
            "token_thw": np.stack([tt, th, tw], -1).astype(np.int32), "ext": max(h, w) // m}


def pack_images(rows, max_patches: int, geom: VisionGeometry = VisionGeometry()) -> dict:
    """rows[b] = [(pixel_values (n_i, patch_dim), grid_thw (3,)), ...] in placeholder order → a batch.

    pixels (B, P, patch_dim) f32; patch_hw (B, P, 2) i32; patch_seg (B, P) i32 (0 pad, k: k-th image);
    patch_window (B, P) i32 (-1 pad, ids unique within a row); token_thw (B, Q, 3) i32;
    token_ext (B, Q) i32 (the image's ext on its last merged token); token_valid (B, Q) bool."""
    P, mu, B = int(max_patches), geom.merge_unit, len(rows)
    if P < 0 or P % mu:
        raise UserError(f"max_patches {P} must be a non-negative multiple of merge_unit {mu}")
    Q = P // mu
    out = {"pixels": np.zeros((B, P, geom.patch_dim), np.float32), "patch_hw": np.zeros((B, P, 2), np.int32),
           "patch_seg": np.zeros((B, P), np.int32), "patch_window": np.full((B, P), -1, np.int32),
           "token_thw": np.zeros((B, Q, 3), np.int32), "token_ext": np.zeros((B, Q), np.int32),
           "token_valid": np.zeros((B, Q), bool)}
    for b, row in enumerate(rows):
        total = sum(int(np.prod(np.asarray(g))) for _, g in row)
        if total > P:
            raise UserError(f"row {b}: its {len(row)} image(s) have {total} patches, more than "
                            f"max_patches={P} (raise the patch budget or lower max_pixels)")
        at, windows = 0, 0
        for k, (pv, g) in enumerate(row, start=1):
            t, h, w = _grid(g, geom.merge_size)
            n = t * h * w
            if t != 1:  # one attention segment per image; HF's full attention is per frame
                raise UserError(f"row {b}, image {k}: grid_thw ({t}, {h}, {w}) has t != 1 (not an image)")
            if np.shape(pv) != (n, geom.patch_dim):
                raise UserError(f"row {b}, image {k}: pixel_values {np.shape(pv)} do not match grid_thw "
                                f"({t}, {h}, {w}) (expected ({n}, {geom.patch_dim}))")
            meta = vision_meta(g, geom)
            sl, tl = slice(at, at + n), slice(at // mu, (at + n) // mu)
            out["pixels"][b, sl] = pv
            out["patch_hw"][b, sl] = meta["patch_hw"]
            out["patch_seg"][b, sl] = k
            out["patch_window"][b, sl] = meta["patch_window"] + windows
            out["token_thw"][b, tl] = meta["token_thw"]
            out["token_valid"][b, tl] = True
            out["token_ext"][b, tl.stop - 1] = meta["ext"]
            at, windows = at + n, windows + int(meta["patch_window"].max()) + 1
    return out


def image_patch_budget(rows_grids, multiple: int | None = None, geom: VisionGeometry = VisionGeometry()) -> int:
    """Smallest P, a multiple of `multiple` (default merge_unit*16) and at least one multiple (no empty
    arrays), that holds every row's patches; rows_grids[b] = the grid_thw of row b's images."""
    multiple = geom.merge_unit * 16 if multiple is None else int(multiple)
    if multiple < 1 or multiple % geom.merge_unit:
        raise UserError(f"multiple {multiple} must be a positive multiple of merge_unit {geom.merge_unit}")
    need = max([sum(int(np.prod(np.asarray(g))) for g in row) for row in rows_grids] + [1])
    return -(-need // multiple) * multiple


def rope_index_reference(ids, valid, image_token_id: int, grids_per_row, merge_size: int = 2) -> np.ndarray:
    """(B, T) ids and valid mask → (3, B, T) int64 mrope positions, HF `get_rope_index` for images:
    text tokens count up on all three axes; an image's tokens get start + (t, h', w'), and the text
    after it resumes at start + max(h, w) // merge_size. Invalid (pad) tokens get 0.

    Plain loops on purpose (a reference). Images are split by their token counts, so two adjacent
    images work (HF groups a run of image tokens as one image; real prompts put text between)."""
    ids, valid = np.asarray(ids), np.asarray(valid).astype(bool)
    out = np.zeros((3,) + ids.shape, np.int64)
    for b in range(ids.shape[0]):
        cols = [j for j in range(ids.shape[1]) if valid[b, j]]
        grids, pos, i = list(grids_per_row[b]), 0, 0
        while i < len(cols):
            if ids[b, cols[i]] != image_token_id:
                out[:, b, cols[i]] = pos
                pos, i = pos + 1, i + 1
                continue
            if not grids:
                raise ValueError(f"row {b}: more image placeholders than grids")
            t, h, w = (int(v) for v in np.asarray(grids.pop(0)).reshape(3))
            for ti in range(t):
                for hi in range(h // merge_size):
                    for wi in range(w // merge_size):
                        if i >= len(cols) or ids[b, cols[i]] != image_token_id:
                            raise ValueError(f"row {b}: fewer placeholders than grid ({t}, {h}, {w}) needs")
                        out[:, b, cols[i]] = (pos + ti, pos + hi, pos + wi)
                        i += 1
            pos += max(h, w) // merge_size
        if grids:
            raise ValueError(f"row {b}: {len(grids)} grid(s) without placeholders")
    return out
