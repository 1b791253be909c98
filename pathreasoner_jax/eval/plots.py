"""PNG training curves from a run's JSONL logs (`runs/<name>/metrics/*.jsonl`).

One figure per group — loss (and eval_loss), learning rate, reward components, KL,
gradient norm, throughput, completion lengths — with one line per numeric key of that group. Keys are grouped by name, so the plots follow
whatever the trainers log ("loss", "sft/loss", "reward/format", "kl", "completion_length" …).
Missing keys, empty files, non-numeric values and broken lines (a run killed mid-write) are
skipped. Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""
from __future__ import annotations

import glob
import io
import json
import math
import os
import re
from collections import defaultdict
from typing import Iterable, Union

from pathreasoner_jax.core.io import write_bytes

STEP_KEYS = ("step", "global_step", "iteration", "iter")


def _token(word: str) -> str:
    # `word` as a whole component of a key split at / . _ - (so "kl" ≠ "skl", "len" ≠ "lens")
    return rf"(?:^|[/._\-]){word}(?:$|[/._\-])"


# (group, title, y label, regex on the lowercased key) — a key goes to the first group it matches.
GROUPS = (
    ("lr", "Learning rate", "lr", re.compile(_token("lr") + "|learning_rate")),
    ("grad_norm", "Gradient norm (before clipping)", "global L2 norm", re.compile(r"grad_norm")),
    ("throughput", "Throughput", "tokens / s", re.compile(r"tokens_per_s")),
    ("rewards", "Reward components", "reward", re.compile(r"reward|advantage")),
    ("kl", "KL to the reference model", "KL", re.compile(_token("kl") + "|kl_div")),
    ("lengths", "Completion lengths", "tokens", re.compile(r"length|" + _token("len"))),
    ("loss", "Loss", "loss", re.compile(r"loss")),
)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_jsonl(path: str) -> list[dict]:
    """The JSON objects of a JSONL file, skipping blank and broken lines."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def _group_of(key: str):
    low = key.lower()
    if low in STEP_KEYS or low in ("epoch", "time", "wall_time", "timestamp"):
        return None
    return next((g for g in GROUPS if g[3].search(low)), None)


def collect_series(paths: Iterable[str]) -> dict[str, dict[str, tuple[list, list]]]:
    """{group: {series label: (steps, values)}} from JSONL files. The step is the record's
    step/global_step/iteration, else its index in the file; a label is the key, prefixed with
    the file name when several files are read."""
    paths = list(paths)
    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(dict)
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        for i, rec in enumerate(read_jsonl(path)):
            step = next((rec[k] for k in STEP_KEYS if _is_number(rec.get(k))), i)
            for key, value in rec.items():
                group = _group_of(str(key))
                if group is None or not _is_number(value):
                    continue
                label = f"{stem}:{key}" if len(paths) > 1 else str(key)
                xs, ys = series[group[0]].setdefault(label, ([], []))
                xs.append(step)
                ys.append(float(value))
    return dict(series)


def _figure_png(title: str, ylabel: str, lines: dict[str, tuple[list, list]]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in sorted(lines.items()):
        ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_training_curves(logs: Union[str, Iterable[str]], out_dir: str) -> dict[str, str]:
    """Write `<out_dir>/<group>.png` for each group with data (see GROUPS).

    logs: a folder (its *.jsonl files), one JSONL path, or several paths; missing paths are
      skipped. Returns {group: png path}; {} when there is nothing to plot.
    """
    if isinstance(logs, str):
        logs = sorted(glob.glob(os.path.join(logs, "*.jsonl"))) if os.path.isdir(logs) else [logs]
    paths = [p for p in logs if os.path.isfile(p)]
    series = collect_series(paths)
    written = {}
    for name, title, ylabel, _ in GROUPS:
        if series.get(name):
            path = os.path.join(out_dir, f"{name}.png")
            written[name] = write_bytes(path, _figure_png(title, ylabel, series[name]))
    return written
