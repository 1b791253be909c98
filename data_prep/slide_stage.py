"""Per-slide features with a resumable cache: `<out>/<slide_id>.h5` (TRIDENT layout plus
`cluster_ids`). A cached file is reused when it was made with the same settings
(encoder, magnification, patch size, tissue threshold, K); writes are atomic, so a killed
run leaves no partial h5 and the rerun skips every slide that was finished.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.records import SlideRecord
from pathreasoner_jax.slides.cluster import kmeans
from pathreasoner_jax.slides.encoders import PatchEncoder
from pathreasoner_jax.slides.h5io import FeatureFile, load_feature_file, read_features_h5, write_features_h5
from pathreasoner_jax.slides.extract import extract_slide
from pathreasoner_jax.core.io import remove_stale_tmp
from data_prep.inputs import SlideItem


@dataclass(frozen=True)
class SlideSettings:
    encoder: str = "demo"
    target_magnification: float = 20.0
    patch_size: int = 256
    default_magnification: float = 20.0  # 0: a slide without mpp/objective power fails
    min_tissue: float = 0.25
    num_clusters: int = 8
    num_threads: int = 4
    progress: bool = False

    @classmethod
    def from_config(cls, d, progress: bool = False) -> "SlideSettings":
        return cls(encoder=d.encoder, target_magnification=float(d.target_magnification),
                   patch_size=int(d.patch_size), default_magnification=float(d.default_magnification),
                   min_tissue=float(d.min_tissue_fraction), num_clusters=int(d.num_clusters),
                   num_threads=int(d.read_threads), progress=progress)

    def stamp(self) -> dict:
        """The attributes a cached h5 must carry to be reused."""
        return {"encoder": self.encoder, "target_magnification": self.target_magnification,
                "patch_size": self.patch_size, "min_tissue": self.min_tissue, "num_clusters": self.num_clusters}


def _matches(attrs: dict, stamp: dict) -> bool:
    for k, v in stamp.items():
        a = attrs.get(k)
        if isinstance(v, float):
            if a is None or abs(float(a) - v) > 1e-9:
                return False
        elif a != v:
            return False
    return True


def features_for(item: SlideItem, s: SlideSettings, get_encoder: Callable[[], PatchEncoder],
                 out_dir: str, force: bool = False) -> FeatureFile:
    """Cached or fresh features of one slide / feature file. Raises UserError (incl. SlideError)."""
    out = os.path.join(out_dir, item.slide_id + ".h5")
    remove_stale_tmp(out)
    stamp = s.stamp()
    if item.kind == "features":  # imported files keep their own encoder / magnification
        stamp = {"imported_from": item.path, "num_clusters": s.num_clusters}
    if os.path.isfile(out) and not force:
        try:
            ff = read_features_h5(out)
            if _matches(ff.attrs, stamp) and ff.cluster_ids is not None:
                return ff
        except UserError:
            pass  # unreadable cache: rebuild it
    if item.kind == "features":
        ff = load_feature_file(item.path)
        if not np.all(np.isfinite(ff.features)):
            raise UserError(f"{item.path}: features contain NaN or inf")
        ff.cluster_ids, _ = kmeans(ff.features, s.num_clusters)
        ff.attrs.setdefault("name", item.slide_id)
    else:
        ff = extract_slide(item.path, get_encoder(), s.target_magnification, s.patch_size,
                           s.default_magnification or None, s.min_tissue, s.num_clusters, s.num_threads, s.progress)
    ff.attrs.update(stamp)
    write_features_h5(out, ff)
    return ff


def slide_record(item: SlideItem, ff: FeatureFile, label: str = "") -> SlideRecord:
    a = ff.attrs
    mag = a.get("target_magnification") or a.get("level0_magnification") or 0.0
    return SlideRecord(slide_id=item.slide_id, features=ff.features, coords=ff.coords,
                       cluster_ids=ff.cluster_ids, magnification=float(mag), source=item.path, label=label,
                       patch_size=int(a.get("patch_size", 0) or 0),
                       patch_size_level0=int(a.get("patch_size_level0", 0) or 0))
