"""Train/val/test assignment per slide (all samples of a slide share its split, so
augmented copies never leak across splits).

Deterministic and independent of the worker layout: slides are ordered by a hash of
(seed, slide id) within each label (the report's diagnosis) and cut by the configured
fractions; every label with ≥ 3 slides gets at least one val and one test slide when
those fractions are non-zero. Large corpora (> `stratify_max` reports) skip the
labelling pass: a hash order is balanced enough there.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict

SPLIT_NAMES = ("train", "val", "test")


def assign_splits(labels: dict[str, str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, str]:
    fr = list(fractions) + [0.0] * (3 - len(fractions))
    total = sum(fr[:3]) or 1.0
    f_val, f_test = fr[1] / total, fr[2] / total
    groups: dict[str, list[str]] = defaultdict(list)
    for sid, lab in labels.items():
        groups[lab].append(sid)
    out = {}
    for lab in sorted(groups):
        ids = sorted(groups[lab], key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
        n = len(ids)
        n_test = round(n * f_test)
        n_val = round(n * f_val)
        if n >= 3:
            n_test = max(n_test, 1 if f_test > 0 else 0)
            n_val = max(n_val, 1 if f_val > 0 else 0)
        for i, sid in enumerate(ids):
            out[sid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out
