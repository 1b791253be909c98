"""One slide + a question → structured answer + per-entity evidence maps + report.html.

Features come from a TRIDENT/CLAM h5 or SlideChat CSV as they are, or are computed on
the fly from a slide file with the configured encoder. Evidence is occlusion by
pseudo-bag cluster (see eval/evidence.py for why): for each KG entity in the
<observe>/<think> spans, the drop in the log-likelihood of that entity's tokens in the
model's own answer when one cluster's patches are hidden.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import write_json
from pathreasoner_jax.data.encode import evenly_spaced_patches
from pathreasoner_jax.eval.entities import EntityLexicon
from pathreasoner_jax.eval.evidence import cluster_drops, evidence_png_bytes, occlusion_scores
from pathreasoner_jax.eval.report import entity_slug, write_report
from pathreasoner_jax.eval.runner import final_model
from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.models.vlm import token_logprobs
from pathreasoner_jax.slides.cluster import kmeans
from pathreasoner_jax.text.decode import completion_texts
from pathreasoner_jax.text.spans import extract_answer, extract_span

FEATURE_EXTS = (".h5", ".hdf5", ".csv")


def load_slide_input(rt, path: str):
    """→ (features (N,F), coords (N,2), cluster_ids (N,), thumbnail or None, downsample, patch size level 0)."""
    cfg = rt.cfg.data
    if path.lower().endswith(FEATURE_EXTS):
        from pathreasoner_jax.slides.h5io import load_feature_file
        ff = load_feature_file(path)
        thumb, ds = None, 1.0
    else:
        from pathreasoner_jax.slides.encoders import build_encoder
        from pathreasoner_jax.slides.extract import extract_slide
        from pathreasoner_jax.slides.reader import open_slide
        from pathreasoner_jax.slides.tiling import read_thumbnail
        ff = extract_slide(path, build_encoder(cfg.encoder, cfg.encoder_weights), cfg.target_magnification,
                           cfg.patch_size, cfg.default_magnification, num_clusters=cfg.num_clusters)
        slide = open_slide(path)
        try:
            ds = max(slide.dimensions) / 1024.0
            thumb = read_thumbnail(slide, ds)
        finally:
            slide.close()
    if len(ff.features) == 0:
        raise UserError(f"{path}: no tissue patches")
    if ff.features.shape[1] != rt.model_cfg.slide.feature_dim:
        raise UserError(f"{path}: features have {ff.features.shape[1]} dims, the model expects "
                        f"{rt.model_cfg.slide.feature_dim}")
    clusters = ff.cluster_ids if ff.cluster_ids is not None else kmeans(ff.features, cfg.num_clusters)[0]
    ps0 = float(ff.attrs.get("patch_size_level0", cfg.patch_size))
    if thumb is None:  # features only: draw on a blank canvas spanning the coordinates
        extent = ff.coords.max(0) + ps0
        ds = max(float(extent.max()) / 1024.0, 1e-6)
        thumb = np.full((int(extent[1] / ds) + 1, int(extent[0] / ds) + 1, 3), 255, np.uint8)
    return ff.features, ff.coords, np.asarray(clusters), thumb, ds, ps0


def infer(rt, slide_path: str, question: str, out_dir: str) -> dict:
    feats, coords, clusters, thumb, ds, ps0 = load_slide_input(rt, slide_path)
    idx = evenly_spaced_patches(coords, np.arange(len(feats)), rt.cfg.data.sample_num)
    feats, coords, clusters = feats[idx], coords[idx], clusters[idx]
    model, ckpt = final_model(rt)
    if "<image>" not in question:
        question = question.strip() + "\n<image>"
    from pathreasoner_jax.data.encode import ExampleEncoder
    enc = ExampleEncoder(rt.tokenizer, rt.ids.image, rt.cfg.data.sample_num)
    prompt = np.asarray(enc.prompt_ids(question, len(idx)), np.int32)[None]
    f = jnp.asarray(feats, jnp.float32)[None]
    pv = jnp.ones((1, len(idx)), bool)
    out = sample(model, jnp.asarray(prompt), jnp.ones_like(jnp.asarray(prompt), bool), f, pv, None,
                 params=SamplingParams(max_new_tokens=rt.cfg.eval.max_new_tokens, greedy=True),
                 eos_id=rt.ids.eos, pad_id=rt.ids.pad)
    completion = completion_texts(rt.tokenizer, out["tokens"], out["mask"])[0]
    from pathreasoner_jax.data.store import load_entities
    entries = load_entities(rt.layout.prep_dir)["entities"]
    lexicon = EntityLexicon(entries)
    reasoning = " ".join(s for s in (extract_span(completion, "observe"), extract_span(completion, "think")) if s)
    entities = sorted({m.name for m in lexicon.find(reasoning)})
    heatmaps, drops = {}, {}
    for name in entities:
        score_fn = entity_score_fn(rt, model, prompt, completion, lexicon, name, f)
        drops[name] = {int(c): float(d) for c, d in cluster_drops(score_fn, clusters).items()}
        scores = occlusion_scores(score_fn, clusters)
        heatmaps[name] = evidence_png_bytes(thumb, coords, ps0, scores, ds)
    result = {"slide": os.path.abspath(slide_path), "question": question, "completion": completion,
              "answer": extract_answer(completion), "entities": entities, "evidence_cluster_drops": drops,
              "checkpoint": os.path.abspath(ckpt), "method": "occlusion by pseudo-bag cluster"}
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "answer.json"), result)
    write_report(out_dir, question=question, completion=completion, thumbnail=thumb, heatmaps=heatmaps,
                 lexicon=entries, provenance={"checkpoint": ckpt, "config run": rt.cfg.run.name,
                                              "slide": slide_path, "patches used": len(idx),
                                              "evidence": "occlusion by pseudo-bag cluster"})
    result["heatmaps"] = {n: f"evidence_{entity_slug(n)}.png" for n in heatmaps}
    return result


def entity_score_fn(rt, model, prompt, completion: str, lexicon, entity: str, feats):
    """keep_mask (N,) → log-likelihood of the entity's tokens in the completion."""
    enc = rt.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(m.start, m.end) for m in lexicon.find(completion) if m.name == entity]
    w = np.asarray([1.0 if any(a < e and b > s for s, e in spans) else 0.0 for a, b in enc["offset_mapping"]],
                   np.float32)
    ids = np.concatenate([prompt[0], np.asarray(enc["input_ids"], np.int32)])[None]
    weight = np.concatenate([np.zeros(prompt.shape[1], np.float32), w])[None]
    targets = jnp.asarray(np.concatenate([ids[:, 1:], ids[:, -1:]], 1))
    lw = jnp.asarray(np.concatenate([weight[:, 1:], np.zeros((1, 1), np.float32)], 1))
    ids_j, valid = jnp.asarray(ids), jnp.ones(ids.shape, bool)
    return lambda keep_mask: float(_weighted_loglik(model, ids_j, valid, feats, jnp.asarray(keep_mask)[None],
                                                    targets, lw))


@nnx.jit
def _weighted_loglik(model, ids, valid, feats, keep, targets, weight):
    hidden, v = model(ids, valid, feats, keep, model.ctx())
    return jnp.sum(token_logprobs(model.llm, hidden, targets) * weight * v)
