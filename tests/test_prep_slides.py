"""Slide reading, magnification, tissue mask and tiling on synthetic slides with known
tissue, plus the bad-slide inputs (corrupt, unsupported compression, no tissue, no mpp)."""
import logging
import os

import numpy as np
import pytest
import tifffile

from pathreasoner_jax.slides.reader import SlideError, magnification_from_mpp, open_slide, slide_mpp
from pathreasoner_jax.slides.tiling import plan_tiles, read_patch
from pathreasoner_jax.slides.tissue import otsu_threshold, tissue_mask
from pathreasoner_jax.slides.views import multiscale_views

PINK = (220, 120, 170)
WHITE = (242, 242, 244)


def write_tiff(path, img, mpp=0.5, compression="deflate", levels=2):
    """Tiled pyramidal TIFF (OpenSlide generic-tiff); written here, independent of data_prep."""
    kw = dict(tile=(256, 256), photometric="rgb", compression=compression)
    if mpp:
        kw.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, subfiletype=0, **kw)
        for i in range(1, levels):
            if mpp:
                kw.update(resolution=(1e4 / (mpp * 2 ** i),) * 2)
            tw.write(np.ascontiguousarray(img[:: 2 ** i, :: 2 ** i]), subfiletype=1, **kw)
    return str(path)


def known_slide(scale=1):
    """1024·scale square, white with a pink tissue rectangle x∈[256,768), y∈[256,512) (·scale)."""
    rng = np.random.default_rng(0)
    n = 1024 * scale
    img = np.empty((n, n, 3), np.uint8)
    img[...] = WHITE
    tissue = np.asarray(PINK, np.int16) + rng.integers(-10, 11, (256 * scale, 512 * scale, 1))
    img[256 * scale:512 * scale, 256 * scale:768 * scale] = np.clip(tissue, 0, 255)
    return img


def test_coords_and_tissue_fraction_on_known_slide(tmp_path):
    path = write_tiff(tmp_path / "known.tiff", known_slide())
    s = open_slide(path)
    plan = plan_tiles(s, path, target_magnification=20, patch_size=256)
    # 20× at mpp 0.5: level 0, 256-px grid; tissue covers exactly grid cells (1,1) and (2,1)
    assert plan.base_magnification == 20 and plan.level == 0 and plan.patch_size_level0 == 256
    assert sorted(map(tuple, plan.coords.tolist())) == [(256, 256), (512, 256)]
    assert plan.coords.dtype == np.int64
    assert abs(plan.tissue_fraction - 512 * 256 / 1024 ** 2) < 0.01
    patch = read_patch(s, plan, plan.coords[0])
    assert patch.shape == (256, 256, 3)
    assert np.abs(patch.reshape(-1, 3).mean(0) - PINK).max() < 4


def test_best_level_and_level0_coords_on_40x_slide(tmp_path):
    path = write_tiff(tmp_path / "known40.tiff", known_slide(scale=2), mpp=0.25)
    s = open_slide(path)
    plan = plan_tiles(s, path, target_magnification=20, patch_size=256)
    assert plan.base_magnification == 40
    # 20× from a 40× scan: read pyramid level 1 (downsample 2) at 256 px, coords at level 0
    assert plan.level == 1 and plan.read_size == 256 and plan.patch_size_level0 == 512
    assert sorted(map(tuple, plan.coords.tolist())) == [(512, 512), (1024, 512)]
    assert read_patch(s, plan, plan.coords[1], out_size=64).shape == (64, 64, 3)


def test_multiscale_views_cover_tissue(tmp_path):
    path = write_tiff(tmp_path / "known.tiff", known_slide())
    s = open_slide(path)
    plan = plan_tiles(s, path)
    views = multiscale_views(s, plan, thumb_size=256, num_rois=2, roi_patches=1, roi_size=128)
    assert views[0].kind == "slide" and views[0].image.shape == (256, 256, 3)
    rois = views[1:]
    assert len(rois) == 2 and all(v.image.shape == (128, 128, 3) for v in rois)
    for v in rois:  # each ROI is one tissue patch: its pixels are the tissue colour
        assert np.abs(v.image.reshape(-1, 3).mean(0) - PINK).max() < 6


def test_magnification_table_and_mpp_sources():
    table = {0.12: 80, 0.18: 60, 0.25: 40, 0.5: 20, 1.0: 10, 2.0: 5}
    for mpp, mag in table.items():
        assert magnification_from_mpp(mpp) == mag
    assert magnification_from_mpp(4.0) == pytest.approx(2.5)
    assert slide_mpp({"openslide.mpp-x": "0.2500"}) == 0.25
    assert slide_mpp({"aperio.MPP": "0.499"}) == 0.499
    assert slide_mpp({"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}) == pytest.approx(0.5)
    assert slide_mpp({"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}) == pytest.approx(0.5)
    assert slide_mpp({"tiff.ResolutionUnit": "none"}) is None


def test_otsu_and_mask_hole_filling():
    vals = np.array([10] * 50 + [200] * 50, np.uint8)
    t = otsu_threshold(vals)
    assert 10 <= t < 200
    img = np.full((60, 60, 3), 240, np.uint8)
    img[10:50, 10:50] = PINK
    img[25:30, 25:30] = 240  # a hole inside the tissue is filled
    img[2:4, 55:57] = PINK  # a 4-px speck is below the minimum area
    m = tissue_mask(img, min_area_px=16)
    assert m[10:50, 10:50].all() and not m[2:4, 55:57].any() and m.sum() == 40 * 40


def test_slide_without_mpp_uses_default_with_warning(tmp_path, caplog):
    path = write_tiff(tmp_path / "nompp.tiff", known_slide(), mpp=None)
    s = open_slide(path)
    with caplog.at_level(logging.WARNING):
        plan = plan_tiles(s, path, default_magnification=20)
    assert plan.magnification_source == "default" and len(plan.coords) == 2
    assert any(path in r.getMessage() and "assuming 20" in r.getMessage() for r in caplog.records)
    with pytest.raises(SlideError) as e:
        plan_tiles(s, path, default_magnification=None)
    assert str(e.value).startswith(path) and "no mpp" in str(e.value) and "\n" not in str(e.value)


def test_corrupt_and_truncated_slides(tmp_path):
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(SlideError) as e:
        open_slide(str(bad))
    msg = str(e.value)
    assert msg.startswith(str(bad)) and "corrupt" in msg and "\n" not in msg
    good = write_tiff(tmp_path / "whole.tiff", known_slide(), compression="jpeg")
    data = open(good, "rb").read()
    cut = tmp_path / "truncated.tiff"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as e:
        s = open_slide(str(cut))
        plan = plan_tiles(s, str(cut))
        for xy in plan.coords:
            read_patch(s, plan, xy)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)


def test_unsupported_compression(tmp_path):
    path = write_tiff(tmp_path / "webp.tiff", known_slide(), compression="webp")
    with pytest.raises(SlideError) as e:
        open_slide(path)
    assert str(e.value).startswith(path) and "Unsupported TIFF compression" in str(e.value)


def test_slide_with_no_tissue(tmp_path):
    img = np.full((1024, 1024, 3), WHITE, np.uint8)
    img += np.random.default_rng(0).integers(0, 3, img.shape, dtype=np.uint8)  # scanner noise only
    path = write_tiff(tmp_path / "blank.tiff", img)
    with pytest.raises(SlideError) as e:
        plan_tiles(open_slide(path), path)
    assert str(e.value).startswith(path) and "no tissue" in str(e.value)


def test_missing_file():
    with pytest.raises(SlideError) as e:
        open_slide("/nonexistent/x.svs")
    assert "file not found" in str(e.value)
    assert not os.path.exists("/nonexistent")
