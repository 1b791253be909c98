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


def write_prep_dir(prep_dir: str, splits: dict, slides: dict, tokenizer_src: str) -> None:
    """A prepared corpus as `prepare` lays it out: array_record shards, manifest,
    entities.json and the tokenizer (so the CLI stages run on it)."""
    import json
    import os
    import shutil

    from data_prep.shards import write_shard
    from pathreasoner_jax.records import encode_sample, encode_slide

    os.makedirs(prep_dir, exist_ok=True)
    ids = sorted(slides)
    slide_shard = write_shard(os.path.join(prep_dir, "slides-00000-of-00001.array_record"),
                              [encode_slide(slides[i]) for i in ids])
    sample_shards = {}
    for split in ("train", "val", "test"):
        rows = splits.get(split, [])
        sample_shards[split] = [write_shard(os.path.join(prep_dir, f"samples-{split}-00000-of-00001.array_record"),
                                            [encode_sample(s) for s in rows])]
    names = sorted({e for rows in splits.values() for s in rows for e in s.entities} |
                   {f for f, _ in CLASSES.values() for f in f})
    with open(os.path.join(prep_dir, "entities.json"), "w") as f:
        json.dump({"entities": [{"name": n, "type": "finding", "synonyms": []} for n in names], "similarity": []}, f)
    with open(os.path.join(prep_dir, "manifest.json"), "w") as f:
        json.dump({"shards": {"slides": [slide_shard], "samples": sample_shards},
                   "slide_index": {sid: [0, row] for row, sid in enumerate(ids)}}, f)
    shutil.copytree(tokenizer_src, os.path.join(prep_dir, "tokenizer"), dirs_exist_ok=True)
