"""One slide + a question → structured answer + per-entity evidence maps + report.html.

Features come from a TRIDENT/CLAM h5 or SlideChat CSV as they are, or are computed on
the fly from a slide file with the configured encoder. Evidence is occlusion by
pseudo-bag cluster (see eval/evidence.py for why): for each KG entity in the
<observe>/<think> spans, the drop in the log-likelihood of that entity's tokens in the
model's own answer when one cluster's patches are hidden. The report draws the signed drops
(report_images.build_entity_evidence) with the slide's mpp for scale bars and zoomed crops of
the top regions read from the slide file when there is one.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import write_json
from pathreasoner_jax.data.slide_chunks import evenly_spaced_patches
from pathreasoner_jax.eval.entities import EntityLexicon
from pathreasoner_jax.eval.evidence import cluster_drops
from pathreasoner_jax.eval.report import answer_status, clean_question, entity_slug, write_report
from pathreasoner_jax.eval.runner import final_model
from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.models.vlm import token_logprobs
from pathreasoner_jax.slides.cluster import kmeans
from pathreasoner_jax.text.decode import completion_texts
from pathreasoner_jax.text.spans import extract_span

FEATURE_EXTS = (".h5", ".hdf5", ".csv")


@dataclass
class SlideInput:
    """What inference needs of one slide. features (N, F), coords (N, 2) level-0, clusters (N,);
    thumbnail (H, W, 3) uint8 at `downsample` level-0 px per pixel (a blank canvas when there is
    no slide image); mpp: µm per level-0 pixel or None; image_path: a slide file OpenSlide can
    read for zoomed crops, or None."""
    features: np.ndarray
    coords: np.ndarray
    clusters: np.ndarray
    thumbnail: np.ndarray
    downsample: float
    patch_size0: float
    mpp: Optional[float] = None
    image_path: Optional[str] = None
    extent: Optional[tuple] = None


def _slide_view(path: str):
    """(thumbnail, downsample, mpp, level-0 (w, h)) of a slide file, long side 1024 px."""
    from pathreasoner_jax.slides.reader import open_slide, slide_mpp
    from pathreasoner_jax.slides.tiling import read_thumbnail

    slide = open_slide(path)
    try:
        ds = max(slide.dimensions) / 1024.0
        return read_thumbnail(slide, ds), ds, slide_mpp(slide.properties), tuple(slide.dimensions)
    finally:
        slide.close()


def load_slide_input(rt, path: str) -> SlideInput:
    """Features from a feature file (its `source_path` slide, when present, supplies the
    thumbnail, mpp and crops) or computed from a slide file."""
    cfg = rt.cfg.data
    thumb = ds = mpp = image_path = extent = None
    if path.lower().endswith(FEATURE_EXTS):
        from pathreasoner_jax.slides.h5io import load_feature_file
        ff = load_feature_file(path)
        source = str(ff.attrs.get("source_path", "") or "")
        mpp = _as_mpp(ff.attrs.get("mpp"))
        if source and os.path.isfile(source):
            try:
                thumb, ds, slide_mpp, extent = _slide_view(source)
                mpp, image_path = mpp or slide_mpp, source
            except UserError as e:  # the features stand on their own; the picture is a bonus
                print(f"infer: warning: {e}; drawing on a blank canvas", file=sys.stderr)
    else:
        from pathreasoner_jax.slides.encoders import build_encoder
        from pathreasoner_jax.slides.extract import extract_slide
        ff = extract_slide(path, build_encoder(cfg.encoder, cfg.encoder_weights), cfg.target_magnification,
                           cfg.patch_size, cfg.default_magnification, num_clusters=cfg.num_clusters)
        thumb, ds, mpp, extent = _slide_view(path)
        image_path = path
    if len(ff.features) == 0:
        raise UserError(f"{path}: no tissue patches")
    if ff.features.shape[1] != rt.model_cfg.slide.feature_dim:
        raise UserError(f"{path}: features have {ff.features.shape[1]} dims, the model expects "
                        f"{rt.model_cfg.slide.feature_dim}")
    clusters = ff.cluster_ids if ff.cluster_ids is not None else kmeans(ff.features, cfg.num_clusters)[0]
    ps0 = float(ff.attrs.get("patch_size_level0", cfg.patch_size))
    if thumb is None:  # features only: draw on a blank canvas spanning the coordinates
        ext = ff.coords.max(0) + ps0
        ds = max(float(ext.max()) / 1024.0, 1e-6)
        thumb = np.full((int(ext[1] / ds) + 1, int(ext[0] / ds) + 1, 3), 255, np.uint8)
    return SlideInput(ff.features, ff.coords, np.asarray(clusters), thumb, ds, ps0, mpp, image_path, extent)


def _as_mpp(v) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if x > 0 and np.isfinite(x) else None


def _evidence(si: SlideInput, drops: dict) -> dict:
    """{entity: EntityEvidence}: overlays, top regions, crops from the slide file when it can be
    read, else from the thumbnail, else none (a blank canvas has nothing to zoom into)."""
    from pathreasoner_jax.eval.report_images import build_entity_evidence, slide_crop_fn

    def build(crop_fn, source):
        return {n: build_entity_evidence(si.thumbnail, si.coords, si.patch_size0, si.clusters, d, si.downsample,
                                         crop_fn=crop_fn, crop_source=source, extent=si.extent)
                for n, d in drops.items()}
    if si.image_path:
        from pathreasoner_jax.slides.reader import open_slide
        slide = open_slide(si.image_path)
        try:
            return build(slide_crop_fn(slide), "slide")
        finally:
            slide.close()
    return build(None, "")


def infer(rt, slide_path: str, question: str, out_dir: str) -> dict:
    """Answer `question` about the slide; write answer.json and report.html in `out_dir`.
    Returns answer.json's content plus "heatmaps" {entity: file name}."""
    si = load_slide_input(rt, slide_path)
    idx = evenly_spaced_patches(si.coords, np.arange(len(si.features)), rt.cfg.data.sample_num)
    si.features, si.coords, si.clusters = si.features[idx], si.coords[idx], si.clusters[idx]
    model, ckpt = final_model(rt)
    prompt_question = question if "<image>" in question else question.strip() + "\n<image>"
    from pathreasoner_jax.data.encode import ExampleEncoder
    enc = ExampleEncoder(rt.tokenizer, rt.ids.image, rt.cfg.data.sample_num)
    prompt = np.asarray(enc.prompt_ids(prompt_question, len(idx)), np.int32)[None]
    f = jnp.asarray(si.features, jnp.float32)[None]
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
    drops = {}
    for name in entities:
        score_fn = entity_score_fn(rt, model, prompt, completion, lexicon, name, f)
        drops[name] = {int(c): float(d) for c, d in cluster_drops(score_fn, si.clusters).items()}
    status = answer_status(completion)
    result = {"slide": os.path.abspath(slide_path), "question": clean_question(question), "completion": completion,
              "answer": status.text, "answer_ok": status.ok, "answer_problem": status.problem,
              "entities": entities, "evidence_cluster_drops": drops, "mpp": si.mpp,
              "checkpoint": os.path.abspath(ckpt), "method": "occlusion by pseudo-bag cluster"}
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "answer.json"), result)
    write_report(out_dir, question=question, completion=completion, thumbnail=si.thumbnail,
                 evidence=_evidence(si, drops), mpp=si.mpp, downsample=si.downsample, lexicon=entries,
                 provenance={"checkpoint": ckpt, "config run": rt.cfg.run.name, "slide": slide_path,
                             "patches used": len(idx), "µm per pixel (level 0)": si.mpp or "unknown",
                             "evidence": "occlusion by pseudo-bag cluster"})
    result["heatmaps"] = {n: f"evidence_{entity_slug(n)}.png" for n in drops}
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
