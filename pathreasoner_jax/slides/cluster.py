"""k-means of a slide's patch features into K pseudo-bags (SPEC §4, K = 8 (ours)).

Plain numpy Lloyd iterations with k-means++ seeding from a fixed seed, so the clusters
are the same on every machine and every run (resumed runs must produce identical shards).
"""
from __future__ import annotations

import numpy as np


def kmeans(x_nd: np.ndarray, k: int = 8, iters: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x_nd (N, D) → (cluster_ids (N,) int32 in [0, min(k, N)), centres (min(k, N), D) float32)."""
    x = np.asarray(x_nd, np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0,), np.int32), np.zeros((0, x.shape[1] if x.ndim == 2 else 0), np.float32)
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    sq = np.einsum("nd,nd->n", x, x)
    centres = [x[rng.integers(n)]]
    d2 = np.maximum(sq - 2 * x @ centres[0] + centres[0] @ centres[0], 0)
    for _ in range(1, k):
        total = d2.sum()
        # all remaining points coincide with a centre: take the lowest unused index
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else len(centres)
        centres.append(x[i])
        d2 = np.minimum(d2, np.maximum(sq - 2 * x @ x[i] + x[i] @ x[i], 0))
    c = np.stack(centres)
    ids = np.zeros(n, np.int64)
    for it in range(iters):
        dist = sq[:, None] - 2 * x @ c.T + np.einsum("kd,kd->k", c, c)[None]
        new_ids = np.argmin(dist, axis=1)
        if it > 0 and np.array_equal(new_ids, ids):
            break
        ids = new_ids
        for j in range(k):
            members = x[ids == j]
            if len(members):  # an empty cluster keeps its centre
                c[j] = members.mean(0)
    return ids.astype(np.int32), c.astype(np.float32)
