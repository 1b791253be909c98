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

Intervals: a paired two-level bootstrap over seeds and questions (`ablation_report.py`).

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

from benchmarks.ablation_report import (GRPO_VARIANTS, SFT_VARIANTS, plot, render_tables, summarize,
                                         write_readme)

def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


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
        cmds = [("prepare", os.path.join(self.root, "prep", "manifest.json"), ["prepare", *c, *self.common])]
        init = f"sft-loss-mode-s{self.seeds[0]}"  # GRPO's start first: the GRPO side needs only it
        sft_cmds = []
        for v, ov in SFT_VARIANTS.items():
            for s in self.seeds:
                run = f"sft-{_slug(v)}-s{s}"
                if ov is None or ("sft" not in parts and run != init):
                    continue
                cmd = (f"SFT {v} s{s}", os.path.join(self.run_dir(run), "checkpoints", "sft", "DONE"),
                       ["sft", *c, *self.common, f"run.name={run}", f"run.seed={s}", *ov])
                if run == init:
                    sft_cmds.insert(0, cmd)
                else:
                    sft_cmds.append(cmd)
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
