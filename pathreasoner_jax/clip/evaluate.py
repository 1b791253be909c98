"""`pathreasoner clip-eval`: zero-shot classification and image↔text retrieval of a
Patho-CLIP checkpoint (or of the configured initial model, `--untrained`) on a split
of the image–text store.

Zero-shot: every class name in every `clip.templates` prompt, the unit text embeddings
averaged per class (open_clip's recipe, metrics.py), each image (rows with a label) given
the nearest class. Retrieval: each pair's caption is its image's text. Writes
`runs/<name>/clip_eval/<tag>.json` (metrics, config, checkpoint) and `<tag>_confusion.png`.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from pathreasoner_jax.checkpoint import restore_params
from pathreasoner_jax.clip.build import build_model, compute_dtype
from pathreasoner_jax.clip.loader import encode_texts
from pathreasoner_jax.clip.metrics import class_embeddings, confusion_png, retrieval, zero_shot
from pathreasoner_jax.clip.preprocess import load_clip_tokenizer, preprocess_images
from pathreasoner_jax.clip.records import ImageTextStore, clip_tokenizer_path
from pathreasoner_jax.core.io import write_json
from pathreasoner_jax.core.progress import track
from pathreasoner_jax.models.layers import Ctx
from pathreasoner_jax.run_layout import CLIP, RunLayout


class Encoders:
    """Jitted image and text encoders of one model, fed in fixed-size padded batches."""

    def __init__(self, model, tokenizer, batch_size: int, dtype):
        self.graphdef, self.state = nnx.split(model)
        self.config, self.tokenizer, self.batch_size = model.config, tokenizer, int(batch_size)
        ctx = Ctx(dtype=dtype)
        self._image = jax.jit(lambda s, px: nnx.merge(self.graphdef, s).encode_image(px, ctx))
        self._text = jax.jit(lambda s, t, m: nnx.merge(self.graphdef, s).encode_text(t, m, ctx))

    def _batched(self, fn, arrays, n: int, desc: str = "") -> np.ndarray:
        out = []
        starts = range(0, n, self.batch_size)
        for i in (track(starts, desc, total=len(starts)) if desc else starts):
            part = [a[i:i + self.batch_size] for a in arrays]
            short = self.batch_size - len(part[0])
            if short:  # one compiled shape
                part = [np.concatenate([a, np.repeat(a[-1:], short, 0)]) for a in part]
            out.append(np.asarray(fn(self.state, *part))[:self.batch_size - short])
        return np.concatenate(out) if out else np.zeros((0, self.config.embed_dim), np.float32)

    def images(self, pngs: list[bytes], desc: str = "") -> np.ndarray:
        px = preprocess_images(pngs, self.config.image_size, threads=4)
        return self._batched(self._image, [px], len(pngs), desc)

    def texts(self, texts: list[str]) -> np.ndarray:
        tokens, mask = encode_texts(self.tokenizer, texts, self.config.context_length)
        return self._batched(self._text, [tokens, mask], len(texts))


def evaluate_clip(cfg, checkpoint: str = "", untrained: bool = False, tag: str = "") -> dict:
    """→ the results dict (also written as JSON, with the confusion matrix PNG)."""
    layout = RunLayout(cfg)
    c = cfg.clip
    store = ImageTextStore(layout.clip_data_dir)
    tokenizer = load_clip_tokenizer(clip_tokenizer_path(cfg))
    model, _ = build_model(cfg, tokenizer)
    source = "initial model (" + (c.hf_path or c.openclip_path or f"random {c.preset}") + ")"
    if not untrained:
        checkpoint = checkpoint or layout.checkpoint(CLIP)
        restore_params(checkpoint, model)
        source = checkpoint
    enc = Encoders(model, tokenizer, c.eval_batch_size, compute_dtype(c))
    split = store.split(c.eval_split)
    recs = [split[i] for i in range(len(split))]
    img = enc.images([r.image_png for r in recs], desc=f"clip-eval {c.eval_split}")
    results = {"split": c.eval_split, "pairs": len(recs), "model": source, "templates": list(c.templates)}
    labelled = np.asarray([r.label >= 0 for r in recs])
    if store.class_names and labelled.any():
        cls = class_embeddings(enc.texts, store.class_names, c.templates)
        labels = np.asarray([r.label for r in recs])[labelled]
        results["zero_shot"] = zero_shot(img[labelled], cls, labels, store.class_names)
    results["retrieval"] = retrieval(img, enc.texts([r.caption for r in recs]), np.arange(len(recs)),
                                     ks=tuple(c.retrieval_ks))
    tag = tag or ("untrained" if untrained else "clip")
    out = os.path.join(layout.clip_eval_dir, f"{tag}.json")
    if jax.process_index() == 0:
        if "zero_shot" in results:
            results["confusion_png"] = confusion_png(np.asarray(results["zero_shot"]["confusion_matrix"]),
                                                     store.class_names,
                                                     os.path.join(layout.clip_eval_dir, f"{tag}_confusion.png"))
        write_json(out, {**results, "config": cfg.to_dict()["clip"]})
    results["path"] = out
    return results


def summary_lines(results: dict) -> list[str]:
    lines = [f"clip-eval: {results['pairs']} {results['split']} pairs, model {results['model']}"]
    zs = results.get("zero_shot")
    if zs:
        lines.append(f"  zero-shot: accuracy {zs['accuracy']:.3f}, balanced {zs['balanced_accuracy']:.3f} "
                     f"over {zs['num_classes']} classes (chance {1 / zs['num_classes']:.3f})")
    r = results["retrieval"]
    lines.append("  retrieval: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if "R@" in k))
    lines.append(f"  → {results['path']}")
    return lines
