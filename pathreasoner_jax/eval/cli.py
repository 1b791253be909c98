"""`pathreasoner eval` and `pathreasoner infer`."""
from __future__ import annotations

import json
import os

from pathreasoner_jax.cli import UserError
from pathreasoner_jax.config import load_config


def run_eval(args) -> int:
    from pathreasoner_jax.eval.plots import plot_training_curves
    from pathreasoner_jax.eval.report import write_metrics_json, write_metrics_md
    from pathreasoner_jax.eval.runner import run_evaluation
    from pathreasoner_jax.eval.suites import run_suites
    from pathreasoner_jax.runtime import setup

    rt = setup(load_config(args.config, args.overrides))
    out_dir = rt.path("eval")
    metrics = run_evaluation(rt)
    metrics.update(run_suites(rt))
    os.makedirs(out_dir, exist_ok=True)
    write_metrics_json(metrics, os.path.join(out_dir, "metrics.json"))
    table = {k: v for k, v in metrics.items() if k not in ("examples",)}
    write_metrics_md(table, os.path.join(out_dir, "metrics.md"), title=f"Evaluation of {rt.cfg.run.name}")
    metrics_dir = rt.path("metrics")
    plots = plot_training_curves(metrics_dir, out_dir) if os.path.isdir(metrics_dir) else {}
    print(_summary(metrics))
    print(f"eval: {os.path.join(out_dir, 'metrics.json')}, metrics.md and {len(plots)} plot(s) in {out_dir}")
    return 0


def _summary(m: dict) -> str:
    rows = [("model", "format", "accuracy", "bleu4", "rougeL", "entity_f1", "reward")]
    for name, r in m["models"].items():
        rows.append((name, *(f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in
                              ("format_compliance", "answer_accuracy", "bleu4", "rougeL", "entity_f1",
                               "reward_mean"))))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    lines.append("comparisons: " + json.dumps(m["comparisons"]))
    return "\n".join(lines)


def run_infer(args) -> int:
    from pathreasoner_jax.eval.infer import infer
    from pathreasoner_jax.runtime import setup

    if not args.question.strip():
        raise UserError("--question is empty")
    if not os.path.exists(args.slide):
        raise UserError(f"{args.slide}: slide or feature file does not exist")
    rt = setup(load_config(args.config, args.overrides))
    out_dir = args.out or rt.path("infer")
    result = infer(rt, args.slide, args.question, out_dir)
    print(f"answer: {result['answer']}")
    print(f"infer: {os.path.join(out_dir, 'answer.json')}, report {os.path.join(out_dir, 'report.html')}")
    return 0
