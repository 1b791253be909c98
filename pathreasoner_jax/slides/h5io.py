"""TRIDENT/CLAM-compatible feature files and SlideChat-style CSV import (SPEC §4).

Written h5 layout (TRIDENT's): `features` (N, D) float32 and `coords` (N, 2) int64 at
the root; attributes on `coords` (and copied on the file root): patch_size,
patch_size_level0, level0_magnification, target_magnification, overlap, name,
level0_width, level0_height; on `features`: encoder. Our additions, ignored by other
readers: `cluster_ids` (N,) int32 and root attributes source_path, tissue_fraction,
magnification_source.

CSV (SlideChat style): one row per patch, optional header; columns named x/y (or
coord_x/coord_y) become coords, every other numeric column is a feature dimension.
Without coordinate columns coords are (i, 0) row numbers and patch_size is 0.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field

import h5py
import numpy as np

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import atomic_path


@dataclass
class FeatureFile:
    """features_nd (N, D) float32, coords_n2 (N, 2) int64, attrs, optional cluster_ids (N,)."""
    features: np.ndarray
    coords: np.ndarray
    attrs: dict = field(default_factory=dict)
    cluster_ids: np.ndarray | None = None


def write_features_h5(path: str, ff: FeatureFile) -> None:
    """Atomic write of one TRIDENT-style h5 file."""
    feats = np.asarray(ff.features, np.float32)
    coords = np.asarray(ff.coords, np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats)
            dc = f.create_dataset("coords", data=coords)
            for k, v in ff.attrs.items():
                if v is None:
                    continue
                dc.attrs[k] = v
                f.attrs[k] = v
            f["features"].attrs["encoder"] = str(ff.attrs.get("encoder", ""))
            if ff.cluster_ids is not None:
                f.create_dataset("cluster_ids", data=np.asarray(ff.cluster_ids, np.int32))


def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def read_features_h5(path: str) -> FeatureFile:
    """Reads TRIDENT or CLAM h5 (`features`, `coords`); CLAM's (1, N, D) features are squeezed."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise UserError(f"{path}: no 'features' dataset (keys: {', '.join(f.keys())})")
            feats = np.asarray(f["features"][()], np.float32)
            if feats.ndim == 3 and feats.shape[0] == 1:
                feats = feats[0]
            coords = np.asarray(f["coords"][()], np.int64) if "coords" in f else None
            if coords is not None and coords.ndim == 3 and coords.shape[0] == 1:
                coords = coords[0]
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            if "coords" in f:
                attrs.update({k: _attr(v) for k, v in f["coords"].attrs.items()})
            clusters = np.asarray(f["cluster_ids"][()], np.int32) if "cluster_ids" in f else None
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 file ({' '.join(str(e).split())})") from None
    if feats.ndim != 2:
        raise UserError(f"{path}: features have shape {feats.shape}, expected (N, D)")
    if coords is None:
        coords = np.stack([np.arange(len(feats)), np.zeros(len(feats))], 1).astype(np.int64)
    if coords.shape != (len(feats), 2):
        raise UserError(f"{path}: coords {coords.shape} do not match features {feats.shape}")
    # CLAM stores patch_size at the read level and the level's downsample
    if "patch_size_level0" not in attrs and "patch_size" in attrs:
        ds = attrs.get("downsample", [1, 1])
        ds = ds[0] if isinstance(ds, (list, tuple)) else ds
        attrs["patch_size_level0"] = int(round(float(attrs["patch_size"]) * float(ds)))
    return FeatureFile(feats, coords, attrs, clusters)


_COORD_NAMES = (("x", "y"), ("coord_x", "coord_y"), ("coords_x", "coords_y"))
_INDEX_NAMES = {"", "index", "unnamed: 0", "id", "patch", "patch_id"}


def read_slidechat_csv(path: str) -> FeatureFile:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None
    if not rows:
        raise UserError(f"{path}: empty CSV")
    try:
        [float(v) for v in rows[0]]
        header, body = [str(i) for i in range(len(rows[0]))], rows
    except ValueError:
        header, body = [h.strip().lower() for h in rows[0]], rows[1:]
    try:
        table = np.asarray(body, dtype=np.float64)
    except ValueError:
        raise UserError(f"{path}: CSV has non-numeric values") from None
    if table.ndim != 2 or table.shape[0] == 0:
        raise UserError(f"{path}: CSV has no patch rows")
    cx = cy = None
    for a, b in _COORD_NAMES:
        if a in header and b in header:
            cx, cy = header.index(a), header.index(b)
    feat_cols = [i for i, h in enumerate(header) if i not in (cx, cy) and h not in _INDEX_NAMES]
    if not feat_cols:
        raise UserError(f"{path}: CSV has no feature columns")
    feats = table[:, feat_cols].astype(np.float32)
    if cx is not None:
        coords = table[:, [cx, cy]].astype(np.int64)
        attrs = {}
    else:
        coords = np.stack([np.arange(len(feats)), np.zeros(len(feats))], 1).astype(np.int64)
        attrs = {"patch_size": 0, "patch_size_level0": 0}
    return FeatureFile(feats, coords, attrs)


def load_feature_file(path: str) -> FeatureFile:
    """.h5/.hdf5 (TRIDENT or CLAM) or .csv (SlideChat)."""
    low = path.lower()
    if low.endswith((".h5", ".hdf5")):
        return read_features_h5(path)
    if low.endswith(".csv"):
        return read_slidechat_csv(path)
    raise UserError(f"{path}: unknown feature file type (expected .h5 or .csv)")
