"""Evidence maps: occlusion attribution and rasterisation over the thumbnail."""
import io

import numpy as np
import pytest
from PIL import Image

from pathreasoner_jax.eval.evidence import (
    DIVERGING_CMAP, MAX_ALPHA, blend_heatmap, cluster_drops, evidence_png_bytes, occlusion_scores,
    rasterize_patch_scores, signed_patch_evidence, symmetric_range, top_regions)
from pathreasoner_jax.eval.report_images import thumbnail_crop_fn


def test_occlusion_hand_computed():
    # score = Σ weight of kept clusters → the drop of cluster c is its weight; cluster 2's
    # removal raises the score (negative drop) so it carries no evidence.
    weights = {0: 3.0, 1: 1.0, 2: -2.0}
    cluster_ids = np.array([0, 0, 1, 2])
    calls = []

    def score_fn(keep):
        calls.append(keep.copy())
        return sum(weights[c] for c in np.unique(cluster_ids[keep]))

    assert cluster_drops(score_fn, cluster_ids) == {0: 3.0, 1: 1.0, 2: -2.0}
    ev = occlusion_scores(score_fn, cluster_ids)
    # positive drops 3 and 1 (total 4): cluster 0 → 3/4 over 2 patches, cluster 1 → 1/4.
    np.testing.assert_allclose(ev, [0.375, 0.375, 0.25, 0.0])
    calls.clear()
    ev = occlusion_scores(score_fn, cluster_ids, min_size=2)  # clusters 1 and 2 too small
    np.testing.assert_allclose(ev, [0.5, 0.5, 0.0, 0.0])
    assert len(calls) == 2  # the full slide + cluster 0 only
    assert occlusion_scores(lambda keep: 0.0, cluster_ids).sum() == 0.0  # no evidence anywhere


def test_rasterize_hand_computed():
    # patch side 4 at level 0, downsample 2 → 2×2 thumbnail pixels per patch
    coords = np.array([[0, 0], [4, 2], [2, 0]])
    heat = rasterize_patch_scores(coords, 4, np.array([1.0, 3.0, 5.0]), (4, 3), 2.0)
    nan = np.nan
    expected = np.array([[1, 3, 5, nan],
                         [1, 3, 4, 3],
                         [nan, nan, 3, 3]], dtype=np.float32)
    np.testing.assert_array_equal(heat, expected)
    # a patch smaller than a thumbnail pixel still paints one pixel; (dx, dy) downsample
    heat = rasterize_patch_scores(np.array([[10, 40]]), 2, np.array([7.0]), (3, 3), (8.0, 16.0))
    assert heat[2, 1] == 7.0 and np.isfinite(heat).sum() == 1


def test_blend_signed_diverging_alpha_scales_with_evidence():
    import matplotlib

    cmap = matplotlib.colormaps[DIVERGING_CMAP]
    thumb = np.full((2, 3, 3), 100, dtype=np.uint8)
    heat = np.array([[2.0, np.nan, 0.0], [-1.0, np.nan, -2.0]], dtype=np.float32)
    out = np.asarray(blend_heatmap(thumb, heat)).astype(float)  # vmax = max |heat| = 2
    # uncovered pixels and evidence 0 keep the tissue exactly
    for y, x in ((0, 1), (1, 1), (0, 2)):
        assert out[y, x].tolist() == [100, 100, 100]

    def expected(t, alpha):  # by hand: colour at 0.5 + t/2, opacity MAX_ALPHA·|t|
        return np.round(100 * (1 - alpha) + np.asarray(cmap(0.5 + t / 2)[:3]) * 255 * alpha)
    np.testing.assert_array_equal(out[0, 0], expected(1.0, MAX_ALPHA))       # +vmax: red end, full opacity
    np.testing.assert_array_equal(out[1, 2], expected(-1.0, MAX_ALPHA))      # −vmax: blue end
    np.testing.assert_array_equal(out[1, 0], expected(-0.5, MAX_ALPHA / 2))  # half-way: half the opacity
    assert out[0, 0, 0] > out[0, 0, 2] and out[1, 2, 2] > out[1, 2, 0]
    assert MAX_ALPHA < 0.6  # even the strongest evidence lets the tissue show through
    # an explicit vmax clips beyond it; vmax 0 (no evidence at all) draws nothing
    np.testing.assert_array_equal(np.asarray(blend_heatmap(thumb, heat, vmax=1.0))[1, 0], expected(-1.0, MAX_ALPHA))
    assert np.asarray(blend_heatmap(thumb, np.zeros((2, 3)))).tolist() == thumb.tolist()


def test_signed_patch_evidence_and_range():
    cluster_ids = np.array([0, 0, 1, 2, 7])
    np.testing.assert_allclose(signed_patch_evidence({0: 0.5, 1: -0.25, 2: 0.0}, cluster_ids),
                               [0.5, 0.5, -0.25, 0.0, 0.0])
    assert symmetric_range({0: 0.5, 1: -0.75, 2: float("nan")}) == 0.75 and symmetric_range({0: 0.0}) == 0.0


def test_top_regions_hand_computed():
    # 6 × 2 grid of 10-px patches; cluster 1 = columns 2–4 of both rows, cluster 0 = 0–1, 2 = 5
    gy, gx = np.mgrid[0:2, 0:6]
    coords = np.stack([gx.ravel() * 10, gy.ravel() * 10], 1)
    clusters = np.where(gx.ravel() < 2, 0, np.where(gx.ravel() < 5, 1, 2))
    regions = top_regions(coords, 10, clusters, {0: 0.25, 1: 0.75, 2: -1.0}, k=3, context=3, extent=(60, 20))
    assert [(r.rank, r.cluster) for r in regions] == [(1, 1), (2, 0)]  # Δ < 0 is never "support"
    r1, r2 = regions
    assert (r1.drop, r1.share, r2.share) == (0.75, 0.75, 0.25)
    # cluster 1: (30, 0) has all 5 mates within 15 px (the first such member); the window starts
    # one patch before it, clipped at the slide's top edge
    assert (r1.patch_x, r1.patch_y) == (30, 0) and (r1.x, r1.y, r1.w, r1.h) == (20, 0, 30, 30)
    assert (r2.patch_x, r2.patch_y, r2.x, r2.y) == (0, 0, 0, 0)  # clipped at the slide's corner
    assert top_regions(coords, 10, clusters, {0: 0.0, 1: -0.1, 2: -1.0}) == []


def test_thumbnail_crop_is_the_box_over_downsample():
    thumb = np.arange(40 * 30 * 3, dtype=np.uint32).reshape(30, 40, 3).astype(np.uint8)
    crop = thumbnail_crop_fn(thumb, 2.0)(16, 8, 32, 32, 16)  # level-0 box → thumbnail (8, 4)–(24, 20)
    np.testing.assert_array_equal(crop, thumb[4:20, 8:24])


def synthetic_slide(seed=0):
    """16×16 grid of 256-px patches; 8 spatial clusters of 4×8 patches; cluster 5 alone
    carries the tumour signal (feature 0 high)."""
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[0:16, 0:16]
    coords = np.stack([gx.ravel() * 256, gy.ravel() * 256], axis=1)
    cluster_ids = (gx.ravel() // 4) + 4 * (gy.ravel() // 8)
    feats = rng.normal(0, 0.3, size=(256, 16))
    signal = cluster_ids == 5
    feats[signal, 0] += 2.0
    return coords, cluster_ids, feats, signal


def tumour_log_likelihood(feats):
    """A tiny attention-MIL "model": attention on feature 0, log P(tumour) = log σ(3·pooled₀ − 1)."""
    def score_fn(keep):
        if not keep.any():
            return -10.0
        f = feats[keep]
        att = np.exp(2.0 * f[:, 0])
        pooled = (att[:, None] * f).sum(0) / att.sum()
        return float(-np.logaddexp(0.0, -(3.0 * pooled[0] - 1.0)))
    return score_fn


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_evidence_mass_lands_on_the_signal_region(noise):
    coords, cluster_ids, feats, signal = synthetic_slide()
    rng = np.random.default_rng(1)
    model = tumour_log_likelihood(feats)
    # with noise, other clusters get small spurious positive drops (like dropout jitter)
    ev = occlusion_scores(lambda keep: model(keep) + noise * rng.normal(), cluster_ids)
    if noise:
        assert 0 < (ev > 0)[~signal].mean()  # the test is not trivially one-cluster
    assert ev.sum() == pytest.approx(1.0, abs=1e-5)
    assert ev[signal].sum() > 0.8
    # on the thumbnail (slide 4096² at downsample 16 → 256² px), the signal block
    # (patch columns 4–7, rows 8–15 → pixels x 64–127, y 128–255) holds most of the mass
    heat = rasterize_patch_scores(coords, 256, ev, (256, 256), 16.0)
    assert np.nansum(heat[128:256, 64:128]) / np.nansum(heat) > 0.8
    y, x = np.unravel_index(np.nanargmax(heat), heat.shape)
    assert 128 <= y < 256 and 64 <= x < 128
    png = evidence_png_bytes(np.full((256, 256, 3), 230, np.uint8), coords, 256, ev, 16.0)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (256, 256)
    # the signed drops put the signal cluster on top, and it is the reddest spot of the map
    drops = cluster_drops(model, cluster_ids)
    assert max(drops, key=drops.get) == 5
    signed = np.asarray(Image.open(io.BytesIO(evidence_png_bytes(
        np.full((256, 256, 3), 230, np.uint8), coords, 256, signed_patch_evidence(drops, cluster_ids), 16.0))))
    redness = signed[..., 0].astype(int) - signed[..., 2]
    y, x = np.unravel_index(np.argmax(redness), redness.shape)
    assert 128 <= y < 256 and 64 <= x < 128
