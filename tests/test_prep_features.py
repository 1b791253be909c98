"""Feature files (TRIDENT/CLAM h5, SlideChat CSV), the demo encoder, k-means, and the
`pathreasoner features` folder run with a bad slide among good ones."""
import json
import os

import h5py
import numpy as np
import pytest
import tifffile

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.slides.cluster import kmeans
from pathreasoner_jax.slides.h5io import FeatureFile, load_feature_file, read_features_h5, write_features_h5


def _tiff(path, img, mpp=0.5):
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="deflate",
                 resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return str(path)


def test_h5_written_is_readable_by_plain_h5py_with_trident_keys(tmp_path):
    feats = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    coords = np.array([[0, 0], [256, 0], [512, 0], [0, 256], [256, 256]], np.int64)
    attrs = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40.0,
             "target_magnification": 20.0, "overlap": 0, "name": "s1", "encoder": "demo"}
    path = str(tmp_path / "s1.h5")
    write_features_h5(path, FeatureFile(feats, coords, attrs, np.arange(5, dtype=np.int32)))
    with h5py.File(path, "r") as f:  # what TRIDENT / CLAM consumers do
        assert f["features"].dtype == np.float32 and f["features"].shape == (5, 8)
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (5, 2)
        np.testing.assert_array_equal(f["features"][()], feats)
        np.testing.assert_array_equal(f["coords"][()], coords)
        ca = f["coords"].attrs
        assert ca["patch_size"] == 256 and ca["patch_size_level0"] == 512
        assert ca["level0_magnification"] == 40.0 and ca["target_magnification"] == 20.0
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_clam_h5_import(tmp_path):
    path = str(tmp_path / "clam.h5")
    with h5py.File(path, "w") as f:  # CLAM: (1, N, D) features allowed; coords attrs at the read level
        f.create_dataset("features", data=np.ones((1, 3, 4), np.float32))
        c = f.create_dataset("coords", data=np.array([[0, 0], [512, 0], [1024, 0]], np.int64))
        c.attrs["patch_size"] = 256
        c.attrs["patch_level"] = 0
        c.attrs["downsample"] = np.array([2.0, 2.0])
    ff = read_features_h5(path)
    assert ff.features.shape == (3, 4) and ff.coords.shape == (3, 2)
    assert ff.attrs["patch_size_level0"] == 512


def test_slidechat_csv_import(tmp_path):
    with_xy = tmp_path / "a.csv"
    with_xy.write_text("x,y,0,1,2\n0,0,0.5,1.5,2.5\n256,0,3,4,5\n")
    ff = load_feature_file(str(with_xy))
    np.testing.assert_array_equal(ff.features, [[0.5, 1.5, 2.5], [3, 4, 5]])
    np.testing.assert_array_equal(ff.coords, [[0, 0], [256, 0]])
    bare = tmp_path / "b.csv"
    bare.write_text("1,2\n3,4\n5,6\n")
    ff = load_feature_file(str(bare))
    assert ff.features.shape == (3, 2) and ff.coords[:, 0].tolist() == [0, 1, 2]
    bad = tmp_path / "c.csv"
    bad.write_text("x,y,f\n1,2,abc\n")
    with pytest.raises(UserError, match="c.csv"):
        load_feature_file(str(bad))


def test_kmeans_matches_plain_lloyd_twin():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(c, 0.05, size=(20, 2)) for c in ([0, 0], [5, 5], [0, 5])])
    ids, centres = kmeans(x, k=3, seed=0)
    # well-separated blobs: every blob is one cluster and the centres are the blob means
    for b in range(3):
        assert len(set(ids[b * 20:(b + 1) * 20].tolist())) == 1
    assert len(set(ids.tolist())) == 3
    for j in range(3):
        np.testing.assert_allclose(centres[j], x[ids == j].mean(0), atol=1e-5)
    ids2, _ = kmeans(x, k=3, seed=0)
    np.testing.assert_array_equal(ids, ids2)
    small, _ = kmeans(x[:2], k=8)
    assert sorted(small.tolist()) == [0, 1]


def test_demo_encoder_is_deterministic_and_separates_classes():
    from PIL import Image
    from data_prep.demo.synth import CLASSES, render
    from pathreasoner_jax.slides.encoders import build_encoder
    enc = build_encoder("demo", batch_size=16)
    patches, labels = [], []
    for c, cls in enumerate(CLASSES):
        for seed in range(2):
            img = render(cls, (768, 768), np.random.default_rng(seed + 10 * c), coverage=1.0)
            for y in (0, 256):
                p = img[y + 128:y + 384, 256:512]
                patches.append(np.asarray(Image.fromarray(p).resize((64, 64), Image.BILINEAR)))
                labels.append(c)
    x = np.stack(patches)
    f = enc(x)
    assert f.shape == (len(x), 512) and f.dtype == np.float32
    np.testing.assert_array_equal(f, build_encoder("demo", batch_size=16)(x))
    labels = np.array(labels)
    correct = 0
    for i in range(len(f)):  # leave-one-out nearest class centroid
        m = np.arange(len(f)) != i
        cents = np.stack([f[m & (labels == c)].mean(0) for c in range(len(CLASSES))])
        correct += int(np.argmin(((cents - f[i]) ** 2).sum(1)) == labels[i])
    assert correct / len(f) >= 0.9


def test_features_folder_run_records_bad_slide(tmp_path):
    from data_prep.features import extract_folder
    slides = tmp_path / "slides"
    slides.mkdir()
    img = np.full((768, 768, 3), 242, np.uint8)
    img[0:512, 0:512] = (200, 110, 160)
    img[0:512, 0:512] += np.random.default_rng(0).integers(0, 20, (512, 512, 1), dtype=np.uint8)
    _tiff(slides / "good.tiff", img)
    (slides / "broken.svs").write_bytes(b"not a slide at all" * 100)
    out = tmp_path / "out"
    rc = extract_folder(str(slides), str(out), encoder="demo")
    assert rc == 0
    man = json.loads((out / "manifest.json").read_text())
    assert [s["slide_id"] for s in man["slides_ok"]] == ["good"]
    assert man["slides_ok"][0]["num_patches"] == 4
    (failed,) = man["slides_failed"]
    assert failed["path"].endswith("broken.svs") and failed["error"].startswith(failed["path"])
    assert sorted(os.listdir(out)) == ["good.h5", "manifest.json"]  # nothing partial for the bad one
    ff = read_features_h5(str(out / "good.h5"))
    assert ff.features.shape == (4, 512)
    assert sorted(map(tuple, ff.coords.tolist())) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    assert ff.cluster_ids.shape == (4,)
    # rerun: the finished slide is reused, not recomputed
    mtime = os.path.getmtime(out / "good.h5")
    assert extract_folder(str(slides), str(out), encoder="demo") == 0
    assert os.path.getmtime(out / "good.h5") == mtime
    with pytest.raises(UserError, match="no slide files"):
        extract_folder(str(tmp_path / "out"), str(tmp_path / "o2"))
