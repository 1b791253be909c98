"""Qwen2.5-VL image preprocessing: HF-parity pixels (PIL backend bit for bit, torchvision within a
tolerance), vision metadata against transformers.vision_utils, batch packing and the rope reference."""
from __future__ import annotations

from types import MethodType, SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.vl.preprocess import (VisionGeometry, image_patch_budget, num_image_tokens, pack_images,
                                            preprocess_image, rope_index_reference, smart_resize, vision_meta)

torch = pytest.importorskip("torch")
IMAGE_TOKEN = 99
SMALL = VisionGeometry(max_pixels=28 * 28 * 64)  # the 700x500 image is cut to 18x12 patches


def _pixels(h, w, channels=3, seed=0) -> np.ndarray:
    """Smooth gradients plus noise: edges and flat parts, like a tile (noise alone hides resampling bugs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = [128 + 100 * np.sin(x / 7 + y / 11), 128 + 90 * np.cos(y / 5), (3 * x + 2 * y) % 256, 40 + 3 * x]
    a = np.stack(base[:channels], -1) + rng.normal(0, 8, (h, w, channels))
    return np.clip(a, 0, 255).astype(np.uint8)


def _cases():
    """(name, image, geometry): odd sizes, an upscaled tiny one, a capped big one, RGBA, grey."""
    rgba = _pixels(60, 90, 4, seed=4)
    return [("100x37", Image.fromarray(_pixels(100, 37)), VisionGeometry()),
            ("333x250", Image.fromarray(_pixels(333, 250, seed=1)), VisionGeometry()),
            ("20x20 min_pixels", Image.fromarray(_pixels(20, 20, seed=2)), VisionGeometry()),
            ("700x500 max_pixels", Image.fromarray(_pixels(700, 500, seed=3)), SMALL),
            ("RGBA", Image.fromarray(rgba, "RGBA"), VisionGeometry()),
            ("L", Image.fromarray(_pixels(45, 70, 1, seed=5)[..., 0], "L"), VisionGeometry()),
            ("RGBA array", rgba, VisionGeometry()),
            ("HxWx1 array", _pixels(45, 70, 1, seed=5), VisionGeometry())]


def _hf(backend, geom):
    if backend == "pil":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    else:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as cls
    # the constructor maps min/max_pixels onto size={"shortest_edge", "longest_edge"}
    return cls(min_pixels=geom.min_pixels, max_pixels=geom.max_pixels, patch_size=geom.patch_size,
               temporal_patch_size=geom.temporal_patch_size, merge_size=geom.merge_size)


@pytest.mark.parametrize("name,image,geom", _cases(), ids=[c[0] for c in _cases()])
def test_preprocess_matches_hf_pil_backend(name, image, geom):
    pv, grid = preprocess_image(image, geom)
    ref = _hf("pil", geom)(images=image, return_tensors="np")
    assert grid.dtype == np.int64 and pv.dtype == np.float32
    np.testing.assert_array_equal(grid[None], ref["image_grid_thw"])
    assert pv.shape == (int(np.prod(grid)), geom.patch_dim) == ref["pixel_values"].shape
    np.testing.assert_array_equal(pv, ref["pixel_values"])  # bit for bit: the same PIL resize and float ops


def test_preprocess_near_hf_torchvision_backend():
    """The default backend resizes with torchvision's uint8 bicubic, not PIL's: same grids, pixels
    within a tolerance. Measured: on the cases above max |diff| 0.0150 normalised (one uint8 level,
    1/255/std), mean ≤ 1e-4. Where h shrinks while w grows (37x100 → 28x112, 70x45 → 56x56; seen
    only in that direction) up to 0.185 (13 levels), mean 0.004 (0.27 level)."""
    one_level = 1 / 255 / 0.26130258 + 1e-4
    for name, image, geom in _cases():
        if isinstance(image, np.ndarray):
            continue
        pv, grid = preprocess_image(image, geom)
        ref = _hf("torchvision", geom)(images=image, return_tensors="np")
        np.testing.assert_array_equal(grid[None], ref["image_grid_thw"])
        d = np.abs(pv - ref["pixel_values"])
        assert d.max() <= one_level and d.mean() < 5e-4, name
    mixed = Image.fromarray(_pixels(37, 100, seed=6))
    pv, grid = preprocess_image(mixed)
    ref = _hf("torchvision", VisionGeometry())(images=mixed, return_tensors="np")
    np.testing.assert_array_equal(grid[None], ref["image_grid_thw"])
    d = np.abs(pv - ref["pixel_values"])
    assert d.max() < 0.3 and d.mean() < 0.006


def test_preprocess_block_major_layout():
    """Row q of pixel_values is patch (r, c) of the normalised image, q in merge-block order, and
    the frame is repeated temporal_patch_size times."""
    g = VisionGeometry()
    img = _pixels(56, 84)
    pv, grid = preprocess_image(img, g)
    assert tuple(grid) == (1, 4, 6)
    x = (img.astype(np.float64) / 255).astype(np.float32)  # 56x84 is already a multiple of 28: no resize
    x = (x - np.float32([0.48145466, 0.4578275, 0.40821073])) / np.float32([0.26862954, 0.26130258, 0.27577711])
    hw = vision_meta(grid, g)["patch_hw"]
    for q in (0, 1, 2, 3, 4, 23):
        r, c = hw[q]
        patch = x[14 * r:14 * r + 14, 14 * c:14 * c + 14].transpose(2, 0, 1)  # (C, p, p)
        np.testing.assert_allclose(pv[q].reshape(3, 2, 14, 14), np.stack([patch, patch], 1), atol=1e-6)


def test_smart_resize_and_errors():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
    for h, w in [(1, 1), (27, 29), (100, 37), (333, 250), (2000, 3000), (5, 900), (4000, 30)]:
        for lo, hi in [(56 * 56, 28 * 28 * 1280), (28 * 28 * 4, 28 * 28 * 16)]:
            assert smart_resize(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi)
    with pytest.raises(UserError, match="aspect ratio"):
        smart_resize(10, 2100)
    with pytest.raises(UserError, match="at least 1"):
        smart_resize(0, 10)
    with pytest.raises(UserError, match="uint8"):
        preprocess_image(np.zeros((30, 30, 3), np.float32))
    with pytest.raises(UserError, match="aspect ratio"):
        preprocess_image(np.zeros((2, 500, 3), np.uint8))


def _hf_windows(grids, g):
    """Each patch's cu_window_seqlens segment (HF order), from get_vision_window_index."""
    from transformers.vision_utils import get_vision_window_index
    widx, cu = get_vision_window_index(torch.tensor(grids), g.merge_size, g.window_size, g.patch_size)
    mu = g.merge_unit
    seg = np.searchsorted(cu.numpy()[1:], np.arange(int(cu[-1])), side="right")  # per reordered patch
    orig = widx.numpy().repeat(mu) * mu + np.tile(np.arange(mu), len(widx))    # its HF-order patch index
    out = np.empty(len(seg), np.int64)
    out[orig] = seg
    return out


def _same_partition(a, b):
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("grid", [(1, 4, 6), (1, 16, 10), (1, 10, 18), (1, 16, 16), (2, 8, 12)])
def test_vision_meta_matches_hf(grid):
    from transformers.vision_utils import get_vision_position_ids
    g = VisionGeometry()
    meta = vision_meta(np.array(grid), g)
    P = int(np.prod(grid))
    np.testing.assert_array_equal(meta["patch_hw"], get_vision_position_ids(torch.tensor([grid]), 2).numpy())
    win = meta["patch_window"]
    assert win.shape == (P,) and win.dtype == np.int32
    assert set(win.tolist()) == set(range(win.max() + 1))  # compact ids, no empty window
    assert _same_partition(win, _hf_windows([grid], g))
    t, h, w = grid
    assert meta["token_thw"].shape == (P // 4, 3) and meta["ext"] == max(h, w) // 2
    assert num_image_tokens(grid) == P // 4


def _hf_rope(ids, valid, grids):
    """HF Qwen2_5_VLModel.get_rope_index, called unbound on an object with a real default config."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    fake = SimpleNamespace(config=Qwen2_5_VLConfig())
    fake.get_vision_position_ids = MethodType(Qwen2_5_VLModel.get_vision_position_ids, fake)
    ids_t = torch.tensor(ids, dtype=torch.long)
    pos, _ = Qwen2_5_VLModel.get_rope_index(
        fake, ids_t, (ids_t == IMAGE_TOKEN).int(), image_grid_thw=torch.tensor(grids, dtype=torch.long),
        attention_mask=torch.tensor(valid, dtype=torch.long))
    return pos.numpy()


def test_token_thw_matches_hf_rope_index():
    g = VisionGeometry()
    for grid in [(1, 4, 6), (1, 10, 18), (1, 16, 10)]:
        meta = vision_meta(grid, g)
        q = len(meta["token_thw"])
        ids = [[1, 2, 3] + [IMAGE_TOKEN] * q + [4, 5]]
        pos = _hf_rope(ids, [[1] * len(ids[0])], [grid])[:, 0]
        np.testing.assert_array_equal(pos[:, 3:3 + q].T - 3, meta["token_thw"])
        assert pos[0, 3 + q] == 3 + meta["ext"]


def _row(grids, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((int(np.prod(gr)), 1176)).astype(np.float32), np.array(gr)) for gr in grids]


def test_pack_images_layout():
    g = VisionGeometry()
    r0, r1 = _row([(1, 4, 6), (1, 8, 12)]), _row([(1, 4, 4)], seed=1)
    out = pack_images([r0, r1, []], 128, g)
    P, Q = 128, 32
    shapes = {"pixels": (3, P, 1176), "patch_hw": (3, P, 2), "patch_seg": (3, P), "patch_window": (3, P),
              "token_thw": (3, Q, 3), "token_ext": (3, Q), "token_valid": (3, Q)}
    assert {k: v.shape for k, v in out.items()} == shapes
    assert out["pixels"].dtype == np.float32 and out["token_valid"].dtype == bool
    assert all(out[k].dtype == np.int32 for k in shapes if k not in ("pixels", "token_valid"))
    np.testing.assert_array_equal(out["pixels"][0, :24], r0[0][0])
    np.testing.assert_array_equal(out["pixels"][0, 24:120], r0[1][0])
    assert not out["pixels"][0, 120:].any() and not out["pixels"][2].any()
    np.testing.assert_array_equal(out["patch_seg"][0], [1] * 24 + [2] * 96 + [0] * 8)
    np.testing.assert_array_equal(out["patch_seg"][1], [1] * 16 + [0] * 112)
    assert (out["patch_window"][0, 120:] == -1).all() and (out["patch_window"][2] == -1).all()
    # windows unique within a row, and the same partition as HF on the row's grids
    assert _same_partition(out["patch_window"][0, :120], _hf_windows([(1, 4, 6), (1, 8, 12)], g))
    np.testing.assert_array_equal(out["patch_hw"][0, 24:120], vision_meta((1, 8, 12))["patch_hw"])
    np.testing.assert_array_equal(out["token_valid"].sum(1), [30, 4, 0])
    np.testing.assert_array_equal(out["token_thw"][0, 6:30], vision_meta((1, 8, 12))["token_thw"])
    ext = np.zeros((3, Q), np.int32)
    ext[0, 5], ext[0, 29], ext[1, 3] = 3, 6, 2
    np.testing.assert_array_equal(out["token_ext"], ext)
    assert not out["patch_hw"][0, 120:].any() and not out["token_thw"][0, 30:].any()


def test_pack_images_errors_and_budget():
    rows = [_row([(1, 4, 6), (1, 8, 4)]), _row([(1, 4, 4)]), []]
    with pytest.raises(UserError, match=r"row 0: .* 56 patches, more than max_patches=48"):
        pack_images(rows, 48)
    with pytest.raises(UserError, match="multiple of merge_unit"):
        pack_images(rows, 62)
    with pytest.raises(UserError, match="do not match grid_thw"):
        pack_images([[(np.zeros((20, 1176), np.float32), np.array([1, 4, 6]))]], 64)
    with pytest.raises(UserError, match="t != 1"):
        pack_images([[(np.zeros((48, 1176), np.float32), np.array([2, 4, 6]))]], 64)
    grids = [[gr for _, gr in r] for r in rows]
    assert image_patch_budget(grids) == 64 and image_patch_budget(grids, multiple=4) == 56
    assert image_patch_budget([[], []]) == 64  # never an empty array
    assert pack_images(rows, image_patch_budget(grids))["pixels"].shape == (3, 64, 1176)


def test_rope_index_reference_matches_hf():
    """Two rows, left padded; row 0: text, image (1,4,6), text, image (1,8,12), text; row 1 starts on its image."""
    row0 = [5, 6, 7] + [IMAGE_TOKEN] * 6 + [8, 9] + [IMAGE_TOKEN] * 24 + [10, 11, 12, 13]
    row1 = [IMAGE_TOKEN] * 9 + [14, 15, 16]
    T = len(row0) + 2
    ids = np.zeros((2, T), np.int64)
    valid = np.zeros((2, T), np.int64)
    ids[0, 2:], valid[0, 2:] = row0, 1
    ids[1, T - len(row1):], valid[1, T - len(row1):] = row1, 1
    grids = [[(1, 4, 6), (1, 8, 12)], [(1, 6, 6)]]
    ref = rope_index_reference(ids, valid, IMAGE_TOKEN, grids)
    hf = _hf_rope(ids, valid, grids[0] + grids[1])
    assert ref.shape == (3, 2, T)
    np.testing.assert_array_equal(ref, hf)
    assert (ref[:, :, :2] == 0).all()
    with pytest.raises(ValueError, match="fewer placeholders"):
        rope_index_reference(ids, valid, IMAGE_TOKEN, [[(1, 4, 6), (1, 8, 14)], [(1, 6, 6)]])
