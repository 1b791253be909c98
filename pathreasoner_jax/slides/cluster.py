"""k-means of a slide's patch features into K pseudo-bags (SPEC §4, K = 8 (ours)).

scikit-learn's `KMeans` (Lloyd, k-means++ seeding, one initialisation) from a fixed seed,
so the clusters are the same on every rerun (resumed runs must produce identical
shards). Fewer patches than K give one cluster per patch; coinciding points may leave
some of the K clusters empty, which the pseudo-bag code allows.
"""
from __future__ import annotations

import warnings

import numpy as np


def kmeans(x_nd: np.ndarray, k: int = 8, iters: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x_nd (N, D) → (cluster_ids (N,) int32 in [0, min(k, N)), centres (min(k, N), D) float32)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(x_nd, np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0,), np.int32), np.zeros((0, x.shape[1] if x.ndim == 2 else 0), np.float32)
    k = max(1, min(int(k), n))
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=int(iters), tol=0.0, random_state=seed,
                algorithm="lloyd")
    with warnings.catch_warnings():  # duplicates: fewer distinct clusters than k is fine here
        warnings.simplefilter("ignore", ConvergenceWarning)
        ids = km.fit_predict(x)
    return ids.astype(np.int32), km.cluster_centers_.astype(np.float32)
