"""In-memory SFT data for tests: a small tokenizer and slides whose class decides the answer."""
from __future__ import annotations

import numpy as np

from pathreasoner_jax.records import SampleRecord, SlideRecord, format_trajectory

CLASSES = {
    "adenocarcinoma": (["gland crowding", "nuclear atypia"], ["crowded atypical glands suggest carcinoma"]),
    "squamous cell carcinoma": (["keratin pearls", "intercellular bridges"], ["keratinisation suggests squamous"]),
    "normal mucosa": (["regular glands", "no atypia"], ["orderly architecture suggests benign tissue"]),
    "lymphoma": (["sheets of lymphoid cells", "monotonous nuclei"], ["monotonous lymphoid sheets suggest lymphoma"]),
}
QUESTION = "What is the diagnosis of this slide? <image>"


def corpus_texts() -> list[str]:
    texts = [QUESTION]
    for dx, (f, r) in CLASSES.items():
        texts.append(format_trajectory(f, r, dx))
    return texts * 20


def make_tokenizer(out_dir: str):
    from pathreasoner_jax.tokenizer import load_tokenizer, special_ids, train_demo_tokenizer
    tok = load_tokenizer(train_demo_tokenizer(corpus_texts(), out_dir, vocab_size=400))
    return tok, special_ids(tok)


def class_features(cls_index: int, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Patch features whose mean direction encodes the class (plus noise)."""
    centre = np.zeros(dim, np.float32)
    centre[cls_index * 4:(cls_index + 1) * 4] = 3.0
    return (centre + rng.standard_normal((n, dim))).astype(np.float32)


def make_dataset(n_slides: int, dim: int = 16, patches: int = 12, seed: int = 0, split: str = "train"):
    rng = np.random.default_rng(seed)
    names = list(CLASSES)
    slides, samples = {}, []
    for i in range(n_slides):
        c = i % len(names)
        sid = f"{split}-slide-{i}"
        coords = np.stack(np.meshgrid(np.arange(4), np.arange(patches // 4)), -1).reshape(-1, 2)[:patches] * 256
        slides[sid] = SlideRecord(sid, class_features(c, patches, dim, rng), coords,
                                  np.arange(patches) % 4, label=names[c])
        f, r = CLASSES[names[c]]
        samples.append(SampleRecord(f"{sid}-q", sid, split, QUESTION, f, r, names[c], names[c], [names[c]]))
    return samples, slides
