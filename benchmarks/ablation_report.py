"""The ablation's statistics, tables and plot (`benchmarks/ablation.py` runs the experiment).

Intervals are a two-level bootstrap: resample the seeds, then the questions, and recompute
the statistic; the draws are shared by all policies (the same questions, and seed i of
every variant together, since variants of one seed share its start and random streams), so
differences are paired; a single-seed policy (the GRPO start) is its one seed each time
(entity F1 is micro-averaged from the resampled sums, as `eval.metrics.entity_prf`). A
difference is "outside the noise" when its 95% interval excludes 0.
"""
from __future__ import annotations

import json
import os

import numpy as np

SFT_VARIANTS = {  # name → overrides of `pathreasoner sft`
    "no masking": ["sft.trajectory_mask_mode=none"],
    "loss-mode": ["sft.trajectory_mask_mode=loss"],
    "drop-mode": ["sft.trajectory_mask_mode=drop"],
    "loss-mode + pseudo-bag": None,  # the loss-mode run's pseudo-bag stage
}
GRPO_VARIANTS = {  # name → overrides of `pathreasoner grpo`
    "(a) format": ["rewards.semantic_weight=0", "rewards.alpha=0"],
    "(b) format+semantic": ["rewards.alpha=0"],
    "(c) format+semantic+entity": [],
    "(d) (c) without KL": ["grpo.kl_mode=none"],
}
METRICS = ("accuracy", "entity_f1", "format", "reward", "accuracy_shuffled")
N_BOOT = 2000



# ---------------------------------------------------------------- statistics

def _stat(metric: str, cols: dict[str, np.ndarray]) -> float:
    """cols: per-(seed, question) arrays of one policy (any leading shape)."""
    if metric == "entity_f1":
        tp, n_pred, n_gold = (float(np.sum(cols[k])) for k in ("ent_tp", "ent_pred", "ent_gold"))
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        return 2 * p * r / (p + r) if p + r else 0.0
    return float(np.mean(cols[metric]))


def _stack(per_seed: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(s[k], np.float64) for s in per_seed]) for k in per_seed[0]}


def bootstrap(policies: dict[str, list[dict]], metric: str, pairs: list[tuple[str, str]] = (),
              n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """policies: name → per-seed per-question score dicts (every policy the same N questions).
    → {"policies": {name: (estimate, lo, hi)}, "differences": {"A − B": (estimate, lo, hi)}}."""
    data = {k: _stack(v) for k, v in policies.items()}
    n_q = next(iter(data.values()))[metric if metric != "entity_f1" else "ent_tp"].shape[1]
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in data}
    diffs = {f"{a} − {b}": [] for a, b in pairs}
    n_seeds = {k: len(next(iter(cols.values()))) for k, cols in data.items()}
    most = max(n_seeds.values())
    for _ in range(n_boot):
        q = rng.integers(n_q, size=n_q)
        s = rng.integers(most, size=most)  # seed i of every policy together (paired); one seed: itself
        vals = {}
        for k, cols in data.items():
            vals[k] = _stat(metric, {c: v[s % n_seeds[k]][:, q] for c, v in cols.items()})
            draws[k].append(vals[k])
        for a, b in pairs:
            diffs[f"{a} − {b}"].append(vals[a] - vals[b])

    def ci(point, xs):
        lo, hi = np.percentile(xs, [2.5, 97.5])
        return (point, float(lo), float(hi))
    points = {k: _stat(metric, cols) for k, cols in data.items()}
    return {"policies": {k: ci(points[k], draws[k]) for k in data},
            "differences": {f"{a} − {b}": ci(points[a] - points[b], diffs[f"{a} − {b}"]) for a, b in pairs}}


def _group(scores: dict[str, dict], prefix: str, variants, seeds) -> dict[str, list[dict]]:
    keys = ("accuracy", "format", "ent_tp", "ent_pred", "ent_gold", "reward", "accuracy_shuffled")
    return {v: [{k: scores[f"{prefix} {v} s{s}"][k] for k in keys} for s in seeds] for v in variants}


def summarize(scores: dict[str, dict], seeds: list[int], grpo_init_name: str, parts: set[str]) -> dict:
    """The two tables: per metric, each policy's estimate and interval, and the differences."""
    out = {}
    base = {"SFT (GRPO start)": [{k: v for k, v in scores[grpo_init_name].items()
                                 if k not in ("checkpoint", "example")}]}
    if "grpo" in parts:
        grpo = {**base, **_group(scores, "GRPO", GRPO_VARIANTS, seeds)}
        c, b = "(c) format+semantic+entity", "(b) format+semantic"
        pairs = [(v, "SFT (GRPO start)") for v in GRPO_VARIANTS] + [(c, b), (c, "(a) format"),
                                                                     (c, "(d) (c) without KL")]
        out["grpo"] = {m: bootstrap(grpo, m, pairs) for m in METRICS}
    if "sft" in parts:
        sft = _group(scores, "SFT", SFT_VARIANTS, seeds)
        pairs = [(v, "no masking") for v in SFT_VARIANTS if v != "no masking"]
        out["sft"] = {m: bootstrap(sft, m, pairs) for m in METRICS}
    return out


def _fmt(t) -> str:
    est, lo, hi = t
    return f"{est:.3f} [{lo:.3f}, {hi:.3f}]"


def render_tables(summary: dict) -> str:
    lines = []
    titles = {"grpo": "GRPO reward ablation (from one SFT checkpoint)", "sft": "SFT trajectory-masking ablation"}
    heads = {"accuracy": "accuracy", "entity_f1": "entity F1", "format": "format", "reward": "reward (c)",
             "accuracy_shuffled": "accuracy, shuffled slides"}
    for part in ("grpo", "sft"):
        if part not in summary:
            continue
        tab = summary[part]
        lines += [f"**{titles[part]}** — mean [95% bootstrap interval]", "",
                  "| policy | " + " | ".join(heads[m] for m in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for name in tab[METRICS[0]]["policies"]:
            lines.append(f"| {name} | " + " | ".join(_fmt(tab[m]["policies"][name]) for m in METRICS) + " |")
        lines += ["", "| difference | accuracy | entity F1 | reward (c) |", "|---|---|---|---|"]
        for d in tab["accuracy"]["differences"]:
            cells = []
            for m in ("accuracy", "entity_f1", "reward"):
                t = tab[m]["differences"][d]
                cells.append(_fmt(t) + (" *" if t[1] > 0 or t[2] < 0 else ""))
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines += ["", "`*`: the interval excludes 0 (outside the noise).", ""]
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    parts = [p for p in ("grpo", "sft") if p in summary]
    fig, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        names = list(summary[part]["accuracy"]["policies"])
        x = np.arange(len(names))
        for j, (m, label) in enumerate((("accuracy", "accuracy"), ("entity_f1", "entity F1"),
                                        ("accuracy_shuffled", "accuracy, shuffled slides"))):
            est = np.array([summary[part][m]["policies"][n] for n in names])
            ax.bar(x + (j - 1) * 0.27, est[:, 0], 0.27, yerr=[est[:, 0] - est[:, 1], est[:, 2] - est[:, 0]],
                   capsize=3, label=label)
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(part.upper() + " ablation (95% bootstrap intervals)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_START, README_END = "<!-- ablation:start -->", "<!-- ablation:end -->"


def write_readme(results_paths: list[str], readme: str) -> None:
    """The tables of one or more results JSONs (each part from the first JSON that has it)
    between the README's ablation markers."""
    from pathreasoner_jax.core.io import atomic_path
    summary, notes = {}, []
    for path in results_paths:
        with open(path) as f:
            res = json.load(f)
        parts = [p for p in ("grpo", "sft") if p in res["summary"] and p not in summary]
        summary.update({p: res["summary"][p] for p in parts})
        ov = f" ({' '.join(res['overrides'])})" if res.get("overrides") else ""
        notes.append(f"{'/'.join(p.upper() for p in parts)} side: {os.path.basename(path)}, {res['config']}{ov}, "
                     f"seeds {res['seeds']}, {res['n_questions']} held-out questions, "
                     f"{res['wall_s'] / 60:.0f} min on {res['machine']}")
    block = (README_START + "\n" + "".join(f"_{n}._  \n" for n in notes) + "\n" + render_tables(summary)
             + "\n" + README_END)
    with open(readme) as f:
        text = f.read()
    if README_START in text:
        text = text[:text.index(README_START)] + block + text[text.index(README_END) + len(README_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_path(readme) as tmp, open(tmp, "w") as f:
        f.write(text)
