"""The docs/scaling.md table: Qwen2.5-0.5B / 1.5B / 7B + LongNet at 4096 and 16384 slide
tokens, SFT and GRPO, on Cloud TPU slices — fits, GiB/chip, mesh, estimated step time and
MFU — from `pathreasoner compile --layers-fit 1,2` figures (XLA's own, deviceless).

    python -m benchmarks.scaling_table [--cells 7b:4096:sft:v5p-64,…] [--out benchmarks/results/compile/table]

Each cell is one JSON under --out, written as soon as it is compiled; a cell whose JSON
exists is not compiled again, so the table fills in over several runs (a 7B stage takes
10–20 min to compile on 2 CPU cores). The mesh of a cell: data 1, tensor the smallest of
1, 2, 4, 8 for which memory.py's estimate fits, fsdp the rest. Batches: SFT max(64, chips)
rows, GRPO max(32, chips) prompts × G 8, each with enough micro-batches
(`sft.grad_accum`, `grpo.micro_batches`) for one row per chip per micro-batch. `--render` prints the table
from the JSONs that exist (missing cells say so).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

MODELS = {"0.5b": "configs/qwen2_5_0_5b.yaml", "1.5b": "configs/qwen2_5_1_5b.yaml", "7b": "configs/qwen2_5_7b.yaml"}
SLIDE_TOKENS = (4096, 16384)
STAGES = ("sft", "grpo")
SLICES = ("v5e-8", "v5e-64", "v5p-64", "v5p-128", "v6e-64", "v6e-256")
TEXT_TOKENS = 512


def cell_overrides(stage: str, tokens: int, chips: int) -> list[str]:
    seq = -(-(tokens + TEXT_TOKENS) // 512) * 512
    out = [f"data.sample_num={tokens}", f"data.length_buckets=[{seq}]"]
    if stage == "sft":
        batch = max(64, chips)
        return out + [f"sft.batch_size={batch}", f"sft.grad_accum={batch // chips}"]
    prompts = max(32, chips)
    return out + [f"grpo.prompts_per_step={prompts}", f"grpo.micro_batches={prompts * 8 // chips}"]


def pick_mesh(cfg, stage: str, chips: int, hbm: int) -> tuple[int, int, int]:
    """data 1, the smallest tensor degree whose memory.py estimate of this stage fits."""
    from pathreasoner_jax import memory
    from pathreasoner_jax.models.factory import resolve_model_config
    mc = resolve_model_config(cfg.model)
    total = "train_total" if stage == "sft" else "grpo_total"
    for t in (1, 2, 4, 8):
        if chips % t == 0:
            est = memory.estimate(cfg, (1, chips // t, t), hbm, model_cfg=mc)
            if est[total] <= hbm:
                return 1, chips // t, t
    return 1, chips // 8, 8


def run_cell(model: str, tokens: int, stage: str, slice_name: str, out_dir: str) -> dict:
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.core.io import write_json
    from pathreasoner_jax.pod.cli import compile_config
    from pathreasoner_jax.pod.stages import with_mesh
    from pathreasoner_jax.pod.topology import parse_slice
    sl = parse_slice(slice_name)
    cfg = load_config(MODELS[model], cell_overrides(stage, tokens, sl.num_devices))
    cfg = with_mesh(cfg, *pick_mesh(cfg, stage, sl.num_devices, sl.device_hbm_bytes))
    rep = compile_config(cfg, sl, (stage,), log=print, layers_fit=(1, 2))
    s = rep["stages"][stage]
    row = {"model": model, "slide_tokens": tokens, "stage": stage, "slice": slice_name, "mesh": rep["mesh"],
           "fits": s["fits"], "peak_gib": s["peak_gib"], "step_time_s": s["step_time_s"], "mfu": s["mfu"],
           "memory_estimate_gib": s["memory_estimate_gib"], "bound": [p["time"]["bound"] for p in s["parts"]],
           "compile_s": s["compile_s"], "overrides": cell_overrides(stage, tokens, sl.num_devices)}
    write_json(os.path.join(out_dir, f"{model}_{tokens}_{stage}_{slice_name}.json"), row)
    return row


def render(out_dir: str, done_only: bool = False) -> str:
    lines = ["| model | slide tokens | stage | slice | fits | GiB/chip | mesh d×f×t | est. step | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, tokens, stage, sl in itertools.product(MODELS, SLIDE_TOKENS, STAGES, SLICES):
        path = os.path.join(out_dir, f"{model}_{tokens}_{stage}_{sl}.json")
        if not os.path.isfile(path):
            if not done_only:
                lines.append(f"| {model} | {tokens} | {stage} | {sl} | not compiled yet | | | | |")
            continue
        with open(path) as f:
            r = json.load(f)
        m = r["mesh"]
        lines.append(f"| {model} | {tokens} | {stage} | {sl} | {'yes' if r['fits'] else 'no'} | "
                     f"{r['peak_gib']:.1f} | {m['data']}×{m['fsdp']}×{m['tensor']} | {r['step_time_s']:.2f} s | "
                     f"{(r['mfu'] or 0):.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="", help="model:tokens:stage:slice,… (default: all 72)")
    ap.add_argument("--out", default="benchmarks/results/compile/table")
    ap.add_argument("--render", action="store_true", help="only print the table")
    ap.add_argument("--done-only", action="store_true", help="leave cells not compiled yet out of the table")
    a = ap.parse_args(argv)
    if not a.render:
        cells = ([tuple(c.split(":")) for c in a.cells.split(",")] if a.cells
                 else list(itertools.product(MODELS, SLIDE_TOKENS, STAGES, SLICES)))
        for model, tokens, stage, sl in cells:
            if not os.path.isfile(os.path.join(a.out, f"{model}_{tokens}_{stage}_{sl}.json")):
                run_cell(model, int(tokens), stage, sl, a.out)
    print(render(a.out, a.done_only))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    raise SystemExit(main())
