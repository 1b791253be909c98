"""Prints the eval summary of a metrics.json: `python -m pathreasoner_jax.eval.summary FILE`."""
from __future__ import annotations

import json
import sys


def summary(m: dict) -> str:
    """The eval table (one row per model) and the comparisons, as printed text."""
    rows = [("model", "format", "accuracy", "bleu4", "rougeL", "entity_f1", "reward", "reward(sampled)")]
    for name, r in m["models"].items():
        rows.append((name, *(f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in
                              ("format_compliance", "answer_accuracy", "bleu4", "rougeL", "entity_f1",
                               "reward_mean", "reward_mean_sampled"))))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    lines.append("")
    lines += [f"  {k}: {v}" for k, v in m["comparisons"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(summary(json.load(f)))
