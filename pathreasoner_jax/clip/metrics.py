"""Patho-CLIP evaluation metrics, pure numpy (+ scikit-learn for the per-class tables).

- `class_embeddings`: open_clip's zero-shot classifier recipe (`build_zero_shot_classifier`):
  every template filled with the class name, encoded, L2-normalised, averaged, the mean
  L2-normalised again.
- `zero_shot`: cosine scores → argmax class; accuracy, balanced accuracy, per-class
  recall/precision/support, confusion matrix, top-5 accuracy when there are > 5 classes.
- `retrieval`: image→text and text→image recall@k with several captions per image, plus
  mean/median rank; keys follow open_clip's retrieval eval (`image_to_text_R@1`, ...).
- `confusion_png`: the confusion matrix as a small PNG (matplotlib Agg), written atomically.

All results are plain JSON-able dicts (Python floats/ints/lists; undefined values → None).
Everything is computed in float64, so bf16/fp32 model outputs rank the same on any backend.
"""
from __future__ import annotations

import io
import math
import warnings
from typing import Callable, Sequence

import numpy as np

from pathreasoner_jax.core.io import write_bytes

_EPS = 1e-12  # as torch.nn.functional.normalize: a zero row stays zero instead of NaN


def normalize(x) -> np.ndarray:
    """(..., E) → (..., E) float64, each row scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def class_embeddings(encode_text: Callable[[list[str]], np.ndarray], class_names: Sequence[str],
                     templates: Sequence) -> np.ndarray:
    """(C, E) unit class embeddings. `encode_text(list of n str) -> (n, E)`; a template is a
    str with one `{}` (filled by `.format(name)`) or, as open_clip also allows, a callable."""
    if not templates:
        raise ValueError("class_embeddings needs at least one template")
    rows = []
    for name in class_names:
        texts = [t(name) if callable(t) else t.format(name) for t in templates]
        emb = normalize(encode_text(texts))
        if emb.shape[0] != len(texts):
            raise ValueError(f"encode_text returned {emb.shape[0]} rows for {len(texts)} texts")
        # each prompt normalised first, so no template dominates the mean by its norm
        rows.append(normalize(emb.mean(axis=0)))
    return np.stack(rows)


def _nan_to_none(values) -> list:
    return [None if (isinstance(v, float) and math.isnan(v)) else v for v in np.asarray(values).tolist()]


def zero_shot(image_emb, class_emb, labels, class_names: Sequence[str]) -> dict:
    """Zero-shot classification of N images (N, E) against C classes (C, E); labels (N,) ints
    in [0, C). Recall of a class without images and precision of a never-predicted class are
    None (undefined, not 0). Confusion matrix rows are true classes, columns predictions."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    names = [str(n) for n in class_names]
    scores = normalize(image_emb) @ normalize(class_emb).T  # (N, C) cosine
    labels = np.asarray(labels, dtype=np.int64)
    n, c = scores.shape
    if len(names) != c or len(set(names)) != c:
        raise ValueError(f"need {c} distinct class names, got {names}")
    if labels.shape != (n,) or n == 0 or labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must be {n} ints in [0, {c}), got shape {labels.shape}")
    pred = scores.argmax(axis=1)
    classes = list(range(c))
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected on small eval sets, and the
        # balanced accuracy (mean recall over the classes present) is still well defined
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(labels, pred)
    prec, rec, _, support = precision_recall_fscore_support(
        labels, pred, labels=classes, zero_division=np.nan)
    out = {
        "n": int(n),
        "num_classes": int(c),
        "class_names": names,
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(balanced),
        "per_class": {
            name: {"recall": r, "precision": p, "support": int(s)}
            for name, r, p, s in zip(names, _nan_to_none(rec), _nan_to_none(prec), support)
        },
        "confusion_matrix": confusion_matrix(labels, pred, labels=classes).tolist(),
    }
    if c > 5:
        # stable sort on -score: among equal scores the lower class index ranks first, as argmax
        top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        out["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=1).mean())
    return out


def _rank_summary(prefix: str, ranks: np.ndarray, ks: Sequence[int]) -> dict:
    """ranks: 0-based rank of each query's first hit → R@k and 1-based mean/median rank.
    A k beyond the candidates acts as k = their count (ranks are below it): R@k = 1."""
    out = {f"{prefix}_R@{k}": float((ranks < k).mean()) for k in ks}
    out[f"{prefix}_mean_rank"] = float(ranks.mean() + 1)
    out[f"{prefix}_median_rank"] = float(np.median(ranks) + 1)
    return out


def retrieval(image_emb, text_emb, image_of_text, ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict:
    """Cross-modal retrieval between N images (N, E) and M texts (M, E); image_of_text (M,)
    gives each text's image, so an image may have several captions (M ≥ N).

    image→text: an image's rank is that of its best-scoring caption among all M texts;
    text→image: a text's rank is that of its image among the N images. Ties count against
    the query (a candidate scoring equal to the true one ranks above it), so degenerate,
    constant embeddings score R@1 = 0, not 1. Work is done in blocks of `chunk` queries so
    memory stays O(chunk · max(N, M)).
    """
    img, txt = normalize(image_emb), normalize(text_emb)
    gt = np.asarray(image_of_text, dtype=np.int64)
    n, m = img.shape[0], txt.shape[0]
    if gt.shape != (m,) or m == 0 or gt.min() < 0 or gt.max() >= n:
        raise ValueError(f"image_of_text must be {m} ints in [0, {n}), got shape {gt.shape}")
    if np.bincount(gt, minlength=n).min() == 0:
        raise ValueError("every image needs at least one caption for image→text retrieval")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be ≥ 1, got {ks}")

    i2t = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        sim = img[s:s + chunk] @ txt.T  # (b, M)
        own = gt[None, :] == np.arange(s, s + sim.shape[0])[:, None]
        best = np.where(own, sim, -np.inf).max(axis=1, keepdims=True)
        # the image's other captions never push its best caption down
        i2t[s:s + chunk] = ((sim >= best) & ~own).sum(axis=1)

    t2i = np.empty(m, dtype=np.int64)
    for s in range(0, m, chunk):
        sim = txt[s:s + chunk] @ img.T  # (b, N)
        true = np.take_along_axis(sim, gt[s:s + chunk, None], axis=1)
        t2i[s:s + chunk] = (sim >= true).sum(axis=1) - 1  # minus the true image itself

    out = {"n_images": int(n), "n_texts": int(m)}
    out.update(_rank_summary("image_to_text", i2t, ks))
    out.update(_rank_summary("text_to_image", t2i, ks))
    return out


def confusion_png(cm, class_names: Sequence[str], path: str) -> str:
    """Writes the (C, C) confusion matrix (rows true, columns predicted) as a PNG at `path`,
    counts printed in the cells; atomic (temp file + os.replace). Returns `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    c = len(class_names)
    if cm.shape != (c, c):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {c} class names")
    side = min(2.0 + 0.6 * c, 16.0)  # grows with the classes, capped so big C stays readable
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas directly: no pyplot, no global backend switch
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = list(range(c))
    ax.set_xticks(ticks, labels=[str(n) for n in class_names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels=[str(n) for n in class_names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Zero-shot confusion matrix")
    hi = cm.max() if cm.size else 0
    for i in range(c):
        for j in range(c):
            # white text on dark cells so the count stays legible
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if hi and cm[i, j] > hi / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes(path, buf.getvalue())
