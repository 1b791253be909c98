"""`pathreasoner eval` and `pathreasoner infer`."""
from __future__ import annotations

import os
import sys

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.config import load_config


def run_eval(args) -> int:
    from pathreasoner_jax.eval.plots import plot_training_curves
    from pathreasoner_jax.eval.report import write_metrics_json, write_metrics_md
    from pathreasoner_jax.eval.runner import run_evaluation
    from pathreasoner_jax.eval.suites import run_suites
    from pathreasoner_jax.eval.summary import summary
    from pathreasoner_jax.runtime import setup

    rt = setup(load_config(args.config, args.overrides))
    out_dir = rt.layout.eval_dir
    metrics = run_evaluation(rt)
    metrics.update(run_suites(rt))
    os.makedirs(out_dir, exist_ok=True)
    write_metrics_json(metrics, os.path.join(out_dir, "metrics.json"))
    table = {k: v for k, v in metrics.items() if k not in ("examples",)}
    write_metrics_md(table, os.path.join(out_dir, "metrics.md"), title=f"Evaluation of {rt.cfg.run.name}")
    metrics_dir = rt.layout.metrics_dir
    plots = plot_training_curves(metrics_dir, out_dir) if os.path.isdir(metrics_dir) else {}
    print(summary(metrics))
    print(f"eval: {os.path.join(out_dir, 'metrics.json')}, metrics.md and {len(plots)} plot(s) in {out_dir}")
    return 0


def run_infer(args) -> int:
    from pathreasoner_jax.eval.infer import infer
    from pathreasoner_jax.runtime import setup

    if not args.question.strip():
        raise UserError("--question is empty")
    if not os.path.exists(args.slide):
        raise UserError(f"{args.slide}: slide or feature file does not exist")
    rt = setup(load_config(args.config, args.overrides))
    out_dir = args.out or rt.layout.infer_dir
    result = infer(rt, args.slide, args.question, out_dir)
    report = os.path.join(out_dir, "report.html")
    print(f"answer: {result['answer']}")
    print(f"infer: {os.path.join(out_dir, 'answer.json')}, report {report}")
    if not result.get("answer_ok", True):
        print(f"infer: warning: no valid answer: {result.get('answer_problem', '')} (see {report})", file=sys.stderr)
        if getattr(args, "strict", False):
            raise UserError(f"--strict: no valid answer ({result.get('answer_problem', '')})")
    return 0
