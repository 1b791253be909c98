"""`pathreasoner ablate` (`bash launch/ablation.sh`): does the knowledge-aware RL do something
measurable, and which reward term does it? Reward and trajectory-masking ablations on the
harder demo task (`data.demo_task=hard`, configs/ablation.yaml), over seeds, with 95%
bootstrap intervals.

  SFT side  (each from scratch, per seed): no trajectory masking, loss-mode, drop-mode, and
            loss-mode followed by the pseudo-bag stage (`prior`, then `sft sft.pseudo_bag=true`).
  GRPO side (all from ONE SFT checkpoint, loss-mode seed `seeds[0]`, per seed):
            (a) format only, (b) format + semantic, (c) format + semantic + entity (the
            paper's reward), (d) (c) without the KL term.
Every policy is then evaluated greedily on the same held-out questions with the true and
with shuffled slides; every policy's reward is the paper's reward (c), whatever it trained on.

Intervals are a two-level bootstrap: resample the seeds, then the questions, and recompute
the statistic; the draws are shared by all policies (the same questions, and seed i of
every variant together, since variants of one seed share its start and random streams), so
differences are paired; a single-seed policy (the GRPO start) is its one seed each time
(entity F1 is micro-averaged from the resampled sums, as `eval.metrics.entity_prf`). A
difference is "outside the noise" when its 95% interval excludes 0.

Training runs are subprocesses of `pathreasoner` under runs/<run.name>/<sub-run>/ sharing
one prep dir and a persistent XLA compilation cache (the sub-runs compile the same shapes);
a finished sub-run or evaluation is skipped on a rerun, so a killed ablation resumes.
Results: benchmarks/results/<device>-ablation-<config>-<UTC time>.json (per-question scores
included) and .png; `--render JSON --write README.md` puts the tables into the README.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time

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


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


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


# ---------------------------------------------------------------- evaluation

def per_question_scores(texts, rewards, rows, lexicon) -> dict[str, list]:
    """One policy's greedy completions → per-question correctness, format, entity counts, reward."""
    from pathreasoner_jax.eval.entities import as_lexicon
    from pathreasoner_jax.eval.metrics import answer_accuracy, is_format_compliant
    from pathreasoner_jax.text.spans import reasoning_text
    lex = as_lexicon(lexicon)
    out = {"accuracy": [], "format": [], "ent_tp": [], "ent_pred": [], "ent_gold": [], "reward": []}
    for t, r, s in zip(texts, rewards, rows):
        pred, gold = lex.entities(reasoning_text(t)), set(s.entities)
        out["accuracy"].append(answer_accuracy([t], [s.trajectory]))
        out["format"].append(float(is_format_compliant(t)))
        out["ent_tp"].append(len(pred & gold))
        out["ent_pred"].append(len(pred))
        out["ent_gold"].append(len(gold))
        out["reward"].append(float(r))
    return out


def evaluate_policies(cfg, checkpoints: dict[str, str], cache_dir: str) -> dict[str, dict]:
    """name → per-question scores with the true slides, plus `accuracy_shuffled`; cached per
    policy in cache_dir (a rerun evaluates only what is missing)."""
    from pathreasoner_jax.checkpoint import restore_params
    from pathreasoner_jax.data.prompts import PromptBuilder
    from pathreasoner_jax.data.store import SampleSource, SlideStore, load_entities
    from pathreasoner_jax.eval.runner import generate, shuffled_slide_ids
    from pathreasoner_jax.grpo.reward_fn import make_reward_fn
    from pathreasoner_jax.runtime import setup
    from pathreasoner_jax.core.io import write_json

    rt = setup(cfg)
    prep = rt.layout.prep_dir
    samples = SampleSource(prep, cfg.eval.split)
    rows = [samples[i] for i in range(len(samples))]
    entities = load_entities(prep)
    builder = PromptBuilder(rt, samples, SlideStore(prep), entities)
    reward_fn = make_reward_fn(rt, entities, builder)  # the paper's reward for every policy
    true_ids = [s.slide_id for s in rows]
    shuffled = shuffled_slide_ids(true_ids, cfg.run.seed)
    ev = cfg.eval
    os.makedirs(cache_dir, exist_ok=True)
    out = {}
    for i, (name, path) in enumerate(checkpoints.items()):
        cached = os.path.join(cache_dir, _slug(name) + ".json")
        if os.path.isfile(cached):
            with open(cached) as f:
                out[name] = json.load(f)
            continue
        t0 = time.perf_counter()
        model = rt.build_model()
        restore_params(path, model)
        texts, rewards = generate(rt, model, builder, rows, true_ids, ev.max_new_tokens, ev.batch_size, reward_fn,
                                  name)
        scores = per_question_scores(texts, rewards, rows, entities["entities"])
        texts_sh, rewards_sh = generate(rt, model, builder, rows, shuffled, ev.max_new_tokens, ev.batch_size,
                                        reward_fn, f"{name} (shuffled)")
        scores["accuracy_shuffled"] = per_question_scores(texts_sh, rewards_sh, rows,
                                                          entities["entities"])["accuracy"]
        scores["checkpoint"] = path
        scores["example"] = texts[0]
        write_json(cached, scores)
        out[name] = scores
        print(f"[ablate] eval {i + 1}/{len(checkpoints)} {name}: accuracy {np.mean(scores['accuracy']):.3f} "
              f"(shuffled {np.mean(scores['accuracy_shuffled']):.3f}) in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


# ---------------------------------------------------------------- orchestration

class Plan:
    """The sub-runs of one ablation under root = runs/<run.name>/."""

    def __init__(self, cfg_path: str, overrides: list[str], seeds: list[int]):
        from pathreasoner_jax.config import load_config
        self.cfg_path, self.overrides, self.seeds = cfg_path, list(overrides), seeds
        self.cfg = load_config(cfg_path, overrides)  # every number range-checked before any work
        self.root = self.cfg.run_dir
        self.common = [f"run.root={self.root}", f"data.prep_dir={os.path.join(self.root, 'prep')}",
                       "run.progress=false", *self.overrides]

    def run_dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def sft_checkpoints(self) -> dict[str, str]:
        out = {}
        for v in SFT_VARIANTS:
            for s in self.seeds:
                run = f"sft-{_slug(v)}-s{s}" if SFT_VARIANTS[v] is not None else f"sft-loss-mode-s{s}"
                stage = "sft_pseudobag" if SFT_VARIANTS[v] is None else "sft"
                out[f"SFT {v} s{s}"] = os.path.join(self.run_dir(run), "checkpoints", stage)
        return out

    def grpo_checkpoints(self) -> dict[str, str]:
        return {f"GRPO {v} s{s}": os.path.join(self.run_dir(f"grpo-{_slug(v)}-s{s}"), "checkpoints", "grpo")
                for v in GRPO_VARIANTS for s in self.seeds}

    def grpo_init(self) -> str:
        return os.path.join(self.run_dir(f"sft-loss-mode-s{self.seeds[0]}"), "checkpoints", "sft")

    def commands(self, parts: set[str]) -> list[tuple[str, str, list[str]]]:
        """[(label, DONE file or output that marks it finished, pathreasoner argv)] in order."""
        c = ["--config", self.cfg_path]
        cmds = [("prepare", os.path.join(self.root, "prep", "manifest.json"),
                 ["prepare", *c, f"run.root={self.root}", f"data.prep_dir={os.path.join(self.root, 'prep')}",
                  "run.progress=false", *self.overrides])]
        init = f"sft-loss-mode-s{self.seeds[0]}"  # GRPO's start first: the GRPO side needs only it
        sft_runs = [(v, s) for v in SFT_VARIANTS if SFT_VARIANTS[v] is not None for s in self.seeds]
        sft_runs = [r for r in sft_runs if f"sft-{_slug(r[0])}-s{r[1]}" == init] + \
            ([r for r in sft_runs if f"sft-{_slug(r[0])}-s{r[1]}" != init] if "sft" in parts else [])
        sft_cmds = []
        for v, s in sft_runs:
            run = f"sft-{_slug(v)}-s{s}"
            sft_cmds.append((f"SFT {v} s{s}", os.path.join(self.run_dir(run), "checkpoints", "sft", "DONE"),
                             ["sft", *c, *self.common, f"run.name={run}", f"run.seed={s}", *SFT_VARIANTS[v]]))
        cmds += sft_cmds[:1]
        if "grpo" in parts:
            for v, ov in GRPO_VARIANTS.items():
                for s in self.seeds:
                    run = f"grpo-{_slug(v)}-s{s}"
                    cmds.append((f"GRPO {v} s{s}", os.path.join(self.run_dir(run), "checkpoints", "grpo", "DONE"),
                                 ["grpo", *c, *self.common, f"run.name={run}", f"run.seed={s}",
                                  f"grpo.init_from={self.grpo_init()}", *ov]))
        cmds += sft_cmds[1:]
        if "sft" in parts:
            for s in self.seeds:
                run = f"sft-loss-mode-s{s}"
                base = [*c, *self.common, f"run.name={run}", f"run.seed={s}", "sft.trajectory_mask_mode=loss"]
                cmds.append((f"prior s{s}", os.path.join(self.run_dir(run), "prior.npz"), ["prior", *base]))
                cmds.append((f"SFT loss-mode + pseudo-bag s{s}",
                             os.path.join(self.run_dir(run), "checkpoints", "sft_pseudobag", "DONE"),
                             ["sft", *base, "sft.pseudo_bag=true", f"sft.epochs={max(1, self.cfg.sft.epochs // 4)}"]))
        return cmds


def _env(root: str) -> dict:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    # the sub-runs compile the same steps at the same shapes: compile each once
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(os.path.join(root, "xla_cache")))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    return env


def run_commands(plan: Plan, parts: set[str]) -> dict[str, float]:
    """Runs what is not finished yet; a failure stops the ablation with the log's tail."""
    from pathreasoner_jax.core.errors import UserError
    cmds = plan.commands(parts)
    log_path = os.path.join(plan.root, "ablation.log")
    os.makedirs(plan.root, exist_ok=True)
    seconds = {}
    for i, (label, done, argv) in enumerate(cmds):
        if os.path.exists(done):
            print(f"[ablate] {i + 1}/{len(cmds)} {label}: done", flush=True)
            continue
        t0 = time.perf_counter()
        with open(log_path, "a") as log:
            log.write(f"\n$ pathreasoner {' '.join(argv)}\n")
            log.flush()
            rc = subprocess.call([sys.executable, "-m", "pathreasoner_jax", *argv], stdout=log, stderr=log,
                                 env=_env(plan.root))
        seconds[label] = round(time.perf_counter() - t0, 1)
        if rc != 0 or not os.path.exists(done):
            with open(log_path) as f:
                tail = "".join(f.readlines()[-15:])
            raise UserError(f"ablation step {label!r} failed (rc {rc}); see {log_path}:\n{tail}")
        print(f"[ablate] {i + 1}/{len(cmds)} {label}: {seconds[label]:.0f}s", flush=True)
    return seconds


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


def run_ablate(args) -> int:
    from benchmarks import common as C
    from pathreasoner_jax.core.io import write_json
    if args.render:
        write_readme([p for p in args.render.split(",") if p], args.write or "README.md")
        print(f"ablate: tables of {args.render} written into {args.write or 'README.md'}")
        return 0
    from pathreasoner_jax.core.errors import UserError
    if not args.config:
        raise UserError("--config is required (configs/ablation.yaml)")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: comma-separated integers") from None
    parts = set(p for p in args.parts.split(",") if p)
    if not seeds or len(set(seeds)) != len(seeds) or not parts or not parts <= {"sft", "grpo"}:
        raise UserError(f"--seeds {args.seeds!r} needs distinct seeds; --parts {args.parts!r} is a subset of sft,grpo")
    t0 = time.perf_counter()
    plan = Plan(args.config, args.overrides, seeds)
    seconds = run_commands(plan, parts)
    ckpts = {}
    if "sft" in parts:
        ckpts.update(plan.sft_checkpoints())
    grpo_init_name = f"SFT loss-mode s{seeds[0]}"
    ckpts.setdefault(grpo_init_name, plan.grpo_init())
    if "grpo" in parts:
        ckpts.update(plan.grpo_checkpoints())
    from pathreasoner_jax.config import load_config
    eval_cfg = load_config(args.config, plan.common)
    t_eval = time.perf_counter()
    scores = evaluate_policies(eval_cfg, ckpts, os.path.join(plan.root, "eval"))
    seconds["evaluation"] = round(time.perf_counter() - t_eval, 1)
    summary = summarize(scores, seeds, grpo_init_name, parts)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    info = C.device_info()
    base = os.path.join(args.out, f"{C.device_slug(info)}-ablation-{plan.cfg.run.name}-{stamp}")
    res = {"config": args.config, "overrides": args.overrides, "seeds": seeds, "parts": sorted(parts),
           "n_questions": len(next(iter(scores.values()))["accuracy"]), "machine": _machine(info),
           "device": info, "versions": C.versions(), "config_resolved": eval_cfg.to_dict(),
           "wall_s": round(time.perf_counter() - t0, 1), "seconds": seconds, "summary": summary,
           "scores": scores}
    write_json(base + ".json", res)
    plot(summary, base + ".png")
    print(render_tables(summary))
    print(f"ablate: {base}.json and .png (README: python -m pathreasoner_jax ablate --render {base}.json)")
    return 0


def _machine(info: dict) -> str:
    return f"{info.get('cpu_model') or info['machine']}, {info['cpu_count']} cores"
