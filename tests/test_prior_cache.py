"""The prior cache belongs to one clustering: a cache from other clusters is refused."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.sft.prior import load_priors


def _cache(path, clusters, k=3):
    np.savez(path, **{"prior::s1": np.array([0.2, 0.3, 0.5], np.float32), "cluster_ids::s1": np.asarray(clusters, np.int32),
                      "__meta__": np.frombuffer(json.dumps({"num_clusters": k}).encode(), np.uint8)})
    return str(path)


def test_matching_cache_loads_renormalised(tmp_path):
    path = _cache(tmp_path / "p.npz", [0, 1, 2, 2])
    slides = {"s1": types.SimpleNamespace(cluster_ids=np.array([0, 1, 2, 2]))}
    p = load_priors(path, slides, num_clusters=3)["s1"]
    assert p.dtype == np.float64 and abs(p.sum() - 1) < 1e-12 and p.tolist() == pytest.approx([0.2, 0.3, 0.5])


def test_cache_from_other_clusters_is_refused(tmp_path):
    path = _cache(tmp_path / "p.npz", [0, 1, 2, 2])
    with pytest.raises(UserError, match="computed for 3 clusters, the config has data.num_clusters=8"):
        load_priors(path, num_clusters=8)
    other = {"s1": types.SimpleNamespace(cluster_ids=np.array([2, 1, 0, 0]))}
    with pytest.raises(UserError, match="cached clusters of slide 's1' differ"):
        load_priors(path, other, num_clusters=3)
    with pytest.raises(UserError, match="differ"):
        load_priors(path, {}, num_clusters=3)  # the slide is not prepared any more
