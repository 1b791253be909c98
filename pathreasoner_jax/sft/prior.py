"""The pseudo-bag prior (SPEC §5; reference defect 7): its formula, the entity-drop Δ per
cluster that feeds it, and the cache file that the SFT loader reads back.

The prior over a slide's k-means clusters, given Δ_c, is
    p = μ·softmax(Δ/τ) + (1−μ)·uniform
over the *eligible* clusters, those with size ≥ max(1, ⌊ε·N⌋) (N = number of patches);
ineligible clusters get probability 0.

For a training sample and cluster c, Δ_c = (loss on the target's KG-entity tokens with
the patches of cluster c removed) − (that loss with the full slide), from forward passes
of the current model: one batch holds the full slide and the K occluded variants. A
slide's Δ is the mean over its training samples (at most `max_samples_per_slide`), and
its prior is p = μ·softmax(Δ/τ) + (1−μ)·uniform over eligible clusters. Written as npz
(`prior::<slide_id>`, `cluster_ids::<slide_id>`, `delta::<slide_id>`, `__meta__` JSON
bytes) under a temporary name, then renamed.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.progress import track
from pathreasoner_jax.data.encode import Example, ExampleEncoder, collate, slide_patches
from pathreasoner_jax.models.vlm import token_logprobs
from pathreasoner_jax.records import trajectory_spans
from pathreasoner_jax.core.io import atomic_path


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


@nnx.jit
def per_row_entity_loss(model, batch):
    """(B,) mean NLL over each row's weighted (entity) target tokens; nan where none."""
    hidden, valid = model(batch["ids"], batch["text_valid"], batch["features"], batch["patch_valid"], model.ctx())
    logp = token_logprobs(model.llm, hidden, batch["targets"])
    w = batch["loss_weight"] * valid
    return -jnp.sum(logp * w, 1) / jnp.sum(w, 1)


def entity_weights(encoder: ExampleEncoder, sample, lexicon) -> tuple[list[int], list[float]]:
    """Target tokens with weight 1 on KG-entity mentions of the trajectory, else 0."""
    text, _ = trajectory_spans(sample.findings, sample.reasoning, sample.answer)
    spans = [(m.start, m.end) for m in lexicon.find(text)]
    enc = encoder.tok(text + "<|im_end|>", add_special_tokens=False, return_offsets_mapping=True)
    w = [1.0 if any(a < e and b > s for s, e in spans) else 0.0 for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), w


def slide_deltas(model, encoder, sample, slide, lexicon, num_clusters, length_buckets, pad_id):
    """(K,) Δ for one sample, or None when its target mentions no KG entity."""
    tgt, w = entity_weights(encoder, sample, lexicon)
    if not any(w):
        return None
    variants, slides = [], []
    all_idx = np.arange(slide.num_patches)
    for c in [-1] + list(range(num_clusters)):
        keep = all_idx if c < 0 else all_idx[slide.cluster_ids != c]
        if len(keep) == 0:
            keep = all_idx
        idx = slide_patches(slide, keep, encoder.sample_num)
        prompt = encoder.prompt_ids(sample.question, len(idx))
        variants.append(Example(np.asarray(prompt + tgt, np.int32), np.asarray([0.0] * len(prompt) + w, np.float32),
                                idx, len(prompt)))
        slides.append(slide)
    batch, _ = collate(variants, slides, length_buckets, encoder.sample_num, pad_id)
    losses = np.asarray(per_row_entity_loss(model, {k: jnp.asarray(v) for k, v in batch.items()}))
    return losses[1:] - losses[0]


def compute_prior_cache(model, encoder, samples, slides, lexicon, sft_cfg, num_clusters, length_buckets, pad_id,
                        out_path: str, max_samples_per_slide: int = 4, progress: bool = True) -> dict:
    by_slide = defaultdict(list)
    for i in range(len(samples)):
        s = samples[i]
        if len(by_slide[s.slide_id]) < max_samples_per_slide:
            by_slide[s.slide_id].append(s)
    arrays, stats = {}, {"slides": 0, "skipped_no_entity": 0}
    for slide_id, group in track(sorted(by_slide.items()), "prior", enabled=progress, unit="slide"):
        slide = slides[slide_id]
        deltas = [d for d in (slide_deltas(model, encoder, s, slide, lexicon, num_clusters, length_buckets, pad_id)
                              for s in group) if d is not None]
        if not deltas:
            stats["skipped_no_entity"] += 1
            continue
        delta = np.mean(deltas, 0)
        sizes = np.bincount(slide.cluster_ids, minlength=num_clusters)[:num_clusters]
        prior = np.asarray(pseudo_bag_prior(delta, sizes, sft_cfg.prior_mu, sft_cfg.prior_tau, sft_cfg.prior_eps))
        arrays[f"prior::{slide_id}"] = prior.astype(np.float64)
        arrays[f"cluster_ids::{slide_id}"] = slide.cluster_ids.astype(np.int32)
        arrays[f"delta::{slide_id}"] = delta.astype(np.float32)
        stats["slides"] += 1
    meta = {"mu": sft_cfg.prior_mu, "tau": sft_cfg.prior_tau, "eps": sft_cfg.prior_eps,
            "num_clusters": num_clusters, **stats}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    if jax.process_index() == 0:
        with atomic_path(out_path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez(f, **arrays)
    return meta


def load_priors(path: str, slides=None, num_clusters: int | None = None) -> dict:
    """The cache's priors, {slide_id: (K,) float64 summing to 1}.

    A cache belongs to one clustering: with `num_clusters` its K must match, and with
    `slides` (slide id → SlideRecord) each cached `cluster_ids::<id>` must equal the
    slide's, else the priors would be applied to other clusters — a UserError says so."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: pseudo-bag prior cache missing (run `pathreasoner prior` first)")
    redo = "recompute it with `pathreasoner prior --force`"
    out = {}
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode()) if "__meta__" in z.files else {}
        if num_clusters is not None and meta.get("num_clusters", num_clusters) != num_clusters:
            raise UserError(f"{path}: cache was computed for {meta['num_clusters']} clusters, the config has "
                            f"data.num_clusters={num_clusters}; {redo}")
        for k in z.files:
            if not k.startswith("prior::"):
                continue
            sid = k.split("::", 1)[1]
            if slides is not None and f"cluster_ids::{sid}" in z.files:
                cached = z[f"cluster_ids::{sid}"]
                if sid not in slides or not np.array_equal(cached, slides[sid].cluster_ids):
                    raise UserError(f"{path}: the cached clusters of slide {sid!r} differ from the prepared "
                                    f"slide's; {redo}")
            p = np.asarray(z[k], np.float64)
            if p.sum() > 0:  # renormalise: the cache is float32-rounded
                out[sid] = p / p.sum()
    return out
