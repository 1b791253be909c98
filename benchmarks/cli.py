"""`pathreasoner bench {sft,rollout,grpo,rewards,prep,prep-scale,longslide,clip} --config CFG [--baseline torch] [--out DIR] [k=v ...]`

Warm-up, then the median of `bench.repeats` timed calls of each side, all in one process
(sides interleaved). Reports step time, tokens/s, MFU (FLOPs: `pathreasoner_jax.flops`;
peak: its device table, None on CPU), peak memory (JAX allocator stats where the backend
has them, torch.cuda.max_memory_allocated, and the process's max RSS — on CPU the only
one, shared by both sides), the speed ratio ours/baseline, and writes
`<out>/<device>-<bench>-<config>.json` (device, versions, config, every raw timing).

Sizes come from the `bench` config section (`bench.batch`, `bench.seq_len`,
`bench.slide_tokens`, `bench.group_size`, `bench.new_tokens`, `bench.warmup`,
`bench.repeats`, `bench.rewards_batch_sizes`), e.g.
    pathreasoner bench sft --config configs/qwen2_5_1_5b.yaml --baseline torch bench.slide_tokens=4096 bench.batch=2
`rewards` always includes its baseline (the reference's Python loop); `prep` and
`prep-scale` (a PrimeKG-sized synthetic graph: `benchmarks/prep_scale.py`) have none;
`clip` (benchmarks/clip_bench.py) times a Patho-CLIP training step against open_clip.
"""
from __future__ import annotations

import os

# torch shares the GPU with JAX in this process: JAX must not grab 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import datetime  # noqa: E402
import sys  # noqa: E402

from benchmarks import common as C  # noqa: E402
from pathreasoner_jax.config import load_config  # noqa: E402
from pathreasoner_jax.core.io import write_json  # noqa: E402


def _bench_sft(cfg, baseline: str) -> dict:
    from benchmarks.model import bench_sft
    return bench_sft(cfg, baseline)


def _bench_rollout(cfg, baseline: str) -> dict:
    from benchmarks.model import bench_rollout
    return bench_rollout(cfg, baseline)


def _bench_rewards(cfg, baseline: str) -> dict:
    from benchmarks.rewards import bench_rewards
    return bench_rewards(batch_sizes=tuple(cfg.bench.rewards_batch_sizes), repeats=cfg.bench.repeats,
                         seed=cfg.run.seed)


def _bench_prep(cfg, baseline: str) -> dict:
    from benchmarks.prep import bench_prep
    if baseline:
        print("bench prep: no baseline exists for data preparation; timing ours only")
    return bench_prep(cfg, repeats=cfg.bench.repeats)


def _bench_prep_scale(cfg, baseline: str) -> dict:
    from benchmarks.prep_scale import bench_prep_scale
    if baseline:
        print("bench prep-scale: no baseline exists; timing ours only")
    return bench_prep_scale(cfg)


def _bench_longslide(cfg, baseline: str) -> dict:
    import jax
    from benchmarks.longslide import bench_longslide
    need = max(cfg.bench.longslide_contexts)
    if jax.device_count() < need:
        raise SystemExit(f"bench longslide: context {need} needs {need} devices, {jax.device_count()} present (on CPU: "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={need} pathreasoner bench longslide …)")
    if baseline:
        print("bench longslide: no baseline exists (no PyTorch WSI model splits a slide over devices); ours only")
    return bench_longslide(cfg)


def _bench_grpo(cfg, baseline: str) -> dict:
    from benchmarks.grpo_bench import bench_grpo
    return bench_grpo(cfg, baseline)


def _bench_clip(cfg, baseline: str) -> dict:
    from benchmarks.clip_bench import bench_clip
    return bench_clip(cfg, baseline)


# name → fn(cfg, baseline) → result dict; the names are the CLI's `bench` choices
BENCHES = {"sft": _bench_sft, "rollout": _bench_rollout, "rewards": _bench_rewards, "prep": _bench_prep,
           "prep-scale": _bench_prep_scale, "longslide": _bench_longslide,
           "grpo": _bench_grpo, "clip": _bench_clip}


def _summary(result: dict) -> str:
    res = result.get("results")
    if isinstance(res, list):  # rewards: one row per batch size
        return "\n".join(f"  batch {r.get('batch')}: device {r.get('device_s', 0) * 1e3:.1f} ms, python loop "
                         f"{r.get('python_s', 0) * 1e3:.1f} ms, {r.get('speedup', 0):.1f}× faster"
                         for r in res if isinstance(r, dict))
    if not isinstance(res, dict):
        return ""
    lines = []
    for name, rec in res.items():
        if not isinstance(rec, dict) or "median_s" not in rec:
            continue
        mfu = f", MFU {rec['mfu']:.1%}" if rec.get("mfu") else ""
        ratio = f", {rec['speedup_vs_torch']:.2f}× torch" if rec.get("speedup_vs_torch") else ""
        unit = "images" if "images_per_s" in rec else "tokens"
        lines.append(f"  {name:12s} {rec['median_s'] * 1e3:9.1f} ms/call  {rec[unit + '_per_s']:10.1f} {unit}/s"
                     f"{mfu}{ratio}")
    return "\n".join(lines)


def run_bench(args) -> int:
    cfg = load_config(args.config, args.overrides)
    baseline = "" if args.baseline == "none" else args.baseline
    before = C.machine_load()
    if not before["quiet"]:
        msg = (f"bench {args.which}: the machine is busy (load {before['loadavg_1_5_15'][0]} on "
               f"{before['cpu_count']} cores; other processes {before['other_cpu_percent']}% CPU: "
               f"{', '.join(b['name'] for b in before['busiest_others']) or '—'})")
        if getattr(args, "require_quiet", False):
            print(msg + "; --require-quiet: not run", file=sys.stderr)
            return 2
        print(msg + "; timings are recorded as loaded", file=sys.stderr)
    result = BENCHES[args.which](cfg, baseline)
    after = C.machine_load()
    info = C.device_info()
    name = os.path.splitext(os.path.basename(args.config))[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    record = {"bench": args.which, "config_name": name, "config_path": args.config, "overrides": list(args.overrides),
              "baseline": baseline or None, "created_utc": now.isoformat(), "device": info, "versions": C.versions(),
              "machine_load": {"before": before, "after": after, "quiet": before["quiet"] and after["quiet"]},
              **result, "config": cfg.to_dict()}
    # a new file per run: a bench never overwrites the results a README table was made from
    path = os.path.join(args.out, f"{C.device_slug(info)}-{args.which}-{name}-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    write_json(path, record)
    print(f"bench {args.which} ({name}, {info['device_kind']}):")
    if args.which == "grpo":
        from benchmarks.grpo_bench import phase_table
        print(phase_table(result["results"]))
    text = _summary(result) if args.which != "grpo" else ""
    if text:
        print(text)
    print(f"wrote {path}")
    return 0
