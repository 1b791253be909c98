"""The `pathreasoner` console script (also `python -m pathreasoner_jax`).

Each subcommand is routed lazily to a `run(args)` function, so `--help` and a typo stay
fast and a command imports only what it uses. `features` and `prepare` live in the
top-level `data_prep` package: the CLI front-end is the one place that routes there
(the library itself never imports `data_prep`, SPEC §1).

Expected failures (bad input, missing files, config errors) raise `UserError` or
`ConfigError`; they are printed as one line and exit with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pathreasoner_jax.core.errors import ConfigError, UserError  # noqa: F401 (UserError: re-export)


def _number(kind, low: float, inclusive: bool = True):
    """An argparse type: `kind` (int/float) at least `low` (or above it); a bad value is a usage error."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if v < low or (v == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low:g}, got {text}")
        return v
    return parse


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.lr=1e-4")


# command → (module:function, help)
COMMANDS = {
    "features": ("data_prep.cli:run_features", "slides → TRIDENT-style h5 features + manifest.json"),
    "prepare": ("data_prep.cli:run_prepare", "slides/features + reports + KG → array_record shards"),
    "sft": ("pathreasoner_jax.sft.cli:run_sft", "masked SFT"),
    "prior": ("pathreasoner_jax.sft.cli:run_prior", "entity-drop Δ per cluster → pseudo-bag prior cache"),
    "grpo": ("pathreasoner_jax.grpo.cli:run_grpo", "knowledge-aware GRPO / DAPO"),
    "eval": ("pathreasoner_jax.eval.cli:run_eval", "metrics on a held-out split"),
    "infer": ("pathreasoner_jax.eval.cli:run_infer", "answer + evidence map for one slide"),
    "hf-import": ("pathreasoner_jax.hf.cli:run_import", "local HF directory → orbax checkpoint"),
    "hf-export": ("pathreasoner_jax.hf.cli:run_export", "checkpoint → HF directory (LoRA merged) + slide_encoder/"),
    "clip-data": ("data_prep.image_text:run_clip_data",
                  "Patho-CLIP data: captions CSV / class folders / demo slide tiles → image-text store"),
    "clip": ("pathreasoner_jax.clip.cli:run_clip", "Patho-CLIP contrastive training (InfoNCE or SigLIP)"),
    "clip-eval": ("pathreasoner_jax.clip.cli:run_clip_eval", "Patho-CLIP zero-shot classification and retrieval"),
    "clip-export": ("pathreasoner_jax.clip.cli:run_clip_export", "Patho-CLIP checkpoint → HF CLIPModel folder"),
    "vl-data": ("data_prep.vl_data:run_vl_data",
                "Patho-R1 data: captions CSV / LLaVA JSON / MCQ JSON / demo slide tiles → VL stores"),
    "vl-init": ("pathreasoner_jax.vl.cli:run_vl_init", "the demo's random Qwen2.5-VL + tokenizer → HF folder"),
    "vl-train": ("pathreasoner_jax.vl.cli:run_vl_train",
                 "Patho-R1 stages on images: continued pretraining, CoT SFT, GRPO on MCQs"),
    "vl-eval": ("pathreasoner_jax.vl.cli:run_vl_eval", "MCQ accuracy (overall, per category; true vs shuffled images)"),
    "vl-export": ("pathreasoner_jax.vl.cli:run_vl_export", "a VL stage's checkpoint → HF Qwen2.5-VL folder"),
    "bench": ("benchmarks.cli:run_bench", "benchmarks against PyTorch baselines"),
    "ablate": ("benchmarks.ablation:run_ablate",
               "reward and trajectory-masking ablations over seeds, with bootstrap intervals (harder demo task)"),
    "compile": ("pathreasoner_jax.pod.cli:run_compile",
                "compile the steps for a TPU slice without one: XLA's per-chip memory, FLOPs, step time"),
    "plan": ("pathreasoner_jax.pod.cli:run_plan", "compile every mesh for a TPU slice; rank those that fit"),
}


def build_parser() -> argparse.ArgumentParser:
    from pathreasoner_jax import __version__
    parser = argparse.ArgumentParser(prog="pathreasoner", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"pathreasoner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == "features":
            p.add_argument("--slides", required=True, help="folder of slide files")
            p.add_argument("--out", required=True, help="output folder (h5 per slide + manifest.json)")
            p.add_argument("--encoder", default="demo", choices=["demo", "conch_v1", "patho_clip"],
                           help="patch encoder: demo (random, offline), conch_v1 or patho_clip (need --encoder-weights)")
            p.add_argument("--encoder-weights", default="", help="local weights: conch_v1 safetensors, or the HF CLIP "
                           "folder `pathreasoner clip-export` writes for patho_clip")
            p.add_argument("--magnification", type=_number(float, 0, inclusive=False), default=20.0,
                           help="target magnification (> 0)")
            p.add_argument("--patch-size", type=_number(int, 16), default=256, help="patch side in pixels (>= 16)")
            p.add_argument("--num-workers", type=_number(int, 1), default=None,
                           help="split the slides into N disjoint parts (one per machine or array task; "
                                "default: from SLURM_ARRAY_TASK_COUNT, SLURM_NTASKS or TPU_WORKER_HOSTNAMES, else 1)")
            p.add_argument("--worker-index", type=_number(int, 0), default=None,
                           help="which part this process does (0 … N-1; default: the SLURM / TPU worker id)")
        elif name == "prepare":
            _config_args(p)
            p.add_argument("--num-workers", type=_number(int, 1), default=None,
                           help="split the work into N disjoint parts (default: from the SLURM / TPU environment "
                                "as for `features`, else 1)")
            p.add_argument("--worker-index", type=_number(int, -1), default=None,
                           help="this part (-1: all, then merge; default: the SLURM / TPU worker id, else -1)")
            p.add_argument("--merge", action="store_true", help="only merge the parts' manifests")
            p.add_argument("--force", action="store_true",
                           help="redo finished parts and per-slide caches (calls the reasoning writer again)")
        elif name == "infer":
            _config_args(p)
            p.add_argument("--slide", required=True,
                           help="slide file (any OpenSlide format) or a features .h5/.csv; a feature file's "
                                "source_path slide, when present, gives the thumbnail, mpp and crops")
            p.add_argument("--question", required=True,
                           help="the question about the slide, e.g. \"What is the diagnosis?\" (no <image> needed)")
            p.add_argument("--out", default="",
                           help="output folder for answer.json, report.html and its images "
                                "(default runs/<name>/infer)")
            p.add_argument("--strict", action="store_true",
                           help="exit with code 2 when the completion has no usable <answer> span "
                                "(the report is still written)")
        elif name == "hf-import":
            p.add_argument("--config", default="", help="YAML config whose model section (slide encoder, projector, "
                           "LoRA, tokenizer_path) the checkpoint is built for; default: the built-in defaults, "
                           "recorded, so a training config that differs is refused at restore")
            p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.lora.rank=16")
            p.add_argument("--hf-dir", required=True, help="local Hugging Face Qwen2/Qwen2.5 folder (config.json, "
                           "*.safetensors, tokenizer); becomes model.llm.hf_path")
            p.add_argument("--out", required=True, help="orbax checkpoint directory to write (step 0); point "
                           "sft.init_from at it")
        elif name == "hf-export":
            p.add_argument("--config", required=True, help="YAML config of the run (its model section must "
                           "match the checkpoint; the tokenizer comes from it)")
            p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.name=demo")
            p.add_argument("--checkpoint", default="", help="checkpoint directory to export (default: the "
                           "run's final checkpoint)")
            p.add_argument("--out", required=True, help="folder to write: an HF Qwen2 directory (LoRA merged, "
                           "tokenizer, generation_config.json) plus slide_encoder/; replaces an earlier export")
            p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                           help="dtype of the written weights (default float32)")
        elif name == "clip-eval":
            _config_args(p)
            p.add_argument("--checkpoint", default="", help="checkpoint directory (default: the run's clip checkpoints)")
            p.add_argument("--untrained", action="store_true",
                           help="evaluate the configured initial model (clip.hf_path / openclip_path / random)")
            p.add_argument("--tag", default="", help="results name under runs/<name>/clip_eval/ (default clip / "
                           "untrained)")
        elif name in ("vl-data", "vl-init"):
            _config_args(p)
            p.add_argument("--force", action="store_true", help="rewrite what exists")
        elif name == "vl-train":
            _config_args(p)
            p.add_argument("--stage", required=True, choices=["pretrain", "sft", "grpo", "all"],
                           help="pretrain (captions), sft (CoT conversations), grpo (MCQs), or all three in order")
            p.add_argument("--force", action="store_true", help="redo a finished stage")
        elif name == "vl-eval":
            _config_args(p)
            p.add_argument("--stage", default="", choices=["", "pretrain", "sft", "grpo"],
                           help="evaluate this stage's checkpoint (default: the untrained model folder)")
            p.add_argument("--checkpoint", default="", help="a checkpoint directory instead of --stage")
            p.add_argument("--tag", default="", help="results name under runs/<name>/vl_eval/")
        elif name == "vl-export":
            _config_args(p)
            p.add_argument("--stage", default="grpo", choices=["pretrain", "sft", "grpo"],
                           help="the stage whose checkpoint to export (default grpo)")
            p.add_argument("--checkpoint", default="", help="a checkpoint directory instead of --stage")
            p.add_argument("--out", required=True, help="HF folder to write (replaced if it is an earlier export)")
            p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        elif name == "clip-export":
            _config_args(p)
            p.add_argument("--checkpoint", default="", help="checkpoint directory (default: the run's clip checkpoints)")
            p.add_argument("--out", required=True, help="HF CLIPModel folder to write (replaced if present)")
            p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        elif name == "bench":
            p.add_argument("which", choices=["sft", "rollout", "grpo", "rewards", "prep", "prep-scale", "longslide",
                                             "clip"])
            _config_args(p)
            p.add_argument("--baseline", default="none", choices=["none", "torch"],
                           help="also run the PyTorch reference implementation on the same weights")
            p.add_argument("--out", default="benchmarks/results",
                           help="folder for the results JSON (a new <device>-<bench>-<config>-<UTC time>.json per run)")
            p.add_argument("--require-quiet", action="store_true",
                           help="do not run when other processes load the machine (default: run and record it)")
        elif name == "ablate":
            _config_args(p, required=False)
            p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (the first one's loss-mode SFT "
                           "checkpoint is where every GRPO variant starts)")
            p.add_argument("--parts", default="sft,grpo", help="sft, grpo or both (comma-separated)")
            p.add_argument("--out", default="benchmarks/results", help="folder for the results JSON and plot")
            p.add_argument("--render", default="",
                           help="results JSON(s), comma-separated: write their tables into --write and stop")
            p.add_argument("--write", default="README.md", help="the markdown file --render updates")
        elif name in ("compile", "plan"):
            from pathreasoner_jax.pod.topology import HELP as TOPOLOGY_HELP
            _config_args(p)
            p.add_argument("--topology", required=True, help=TOPOLOGY_HELP)
            p.add_argument("--num-slices", type=_number(int, 1), default=1, help="multi-slice: slices of that "
                           "topology joined over the data-centre network (where libtpu allows it)")
            stages = ["sft", "grpo", "rollout"] + (["all"] if name == "compile" else [])
            p.add_argument("--stage", default="all" if name == "compile" else "sft", choices=stages,
                           help="which jitted step(s) to compile (grpo = log-prob pass + update)")
            p.add_argument("--json", default="", help="also write the figures as JSON here")
            p.add_argument("--layers-fit", default="", help="A,B: compile with A and B decoder layers and "
                           "extrapolate linearly to the model's (minutes instead of an hour for 7B on a laptop)")
            if name == "compile":
                p.add_argument("--dump-dir", default="", help="XLA's dumps of each compiled executable here "
                               "(optimized HLO, buffer assignment, memory-usage report); the largest heap "
                               "allocations then appear in the report and the JSON")
            if name == "plan":
                p.add_argument("--meshes", default="", help="only these DATAxFSDPxTENSOR candidates, e.g. "
                               "1x32x1,2x16x1 (default: every factorisation whose data×fsdp divides the batch)")
                p.add_argument("--out", default="", help="mesh preset YAML for the best candidate (default "
                               "runs/plan/<run.name>_<topology>.yaml)")
        else:
            _config_args(p)
            p.add_argument("--force", action="store_true", help="redo even if finished")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `bench sft --config X k=v`: overrides after an option that follows a positional are
    # left over by argparse; take them as overrides, reject anything else
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", None) or []) + extra
    target, _ = COMMANDS[args.command]
    module_name, fn_name = target.split(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
        rc = fn(args)
    except (UserError, ConfigError, FileNotFoundError) as e:
        print(f"pathreasoner {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
