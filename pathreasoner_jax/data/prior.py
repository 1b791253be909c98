"""Pseudo-bag prior over a slide's k-means clusters (SPEC §5).

Given Δ_c (how much the KG-entity loss rises when cluster c is removed), the prior is
    p = μ·softmax(Δ/τ) + (1−μ)·uniform
over the *eligible* clusters, those with size ≥ max(1, ⌊ε·N⌋) (N = number of patches);
ineligible clusters get probability 0. Δ itself comes from a model forward pass (the
`prior` command); this module only holds the formula so it can be tested by hand.
"""
from __future__ import annotations

import jax.numpy as jnp


def eligible_clusters(cluster_sizes, eps: float):
    """(K,) bool: size ≥ max(1, ⌊ε·N⌋), N = Σ sizes."""
    sizes = jnp.asarray(cluster_sizes)
    n = jnp.sum(sizes, axis=-1, keepdims=True)
    min_size = jnp.maximum(1, jnp.floor(eps * n))
    return sizes >= min_size


def pseudo_bag_prior(delta, cluster_sizes, mu: float = 0.7, tau: float = 1.0, eps: float = 0.02):
    """delta: (K,) float Δ per cluster; cluster_sizes: (K,) patch counts → (K,) probabilities.

    Works under jit and on (..., K) batches. When no cluster is eligible the result is
    all zeros (nothing may be dropped).
    """
    delta = jnp.asarray(delta, jnp.float32)
    ok = eligible_clusters(cluster_sizes, eps)
    n_ok = jnp.sum(ok, axis=-1, keepdims=True)
    logits = jnp.where(ok, delta / tau, -jnp.inf)
    # max over eligible entries only; all-ineligible rows fall back to 0 to avoid nan
    m = jnp.max(jnp.where(ok, logits, -jnp.inf), axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.where(ok, jnp.exp(logits - m), 0.0)
    soft = e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)
    uniform = jnp.where(ok, 1.0 / jnp.maximum(n_ok, 1), 0.0)
    return mu * soft + (1.0 - mu) * uniform
