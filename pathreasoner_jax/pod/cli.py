"""`pathreasoner compile` and `pathreasoner plan`: the training config compiled for a TPU
slice that is not attached (libtpu's deviceless topologies), with XLA's per-chip memory
and cost figures, a roofline step time and MFU (pod/analysis.py); `plan` does that for
every (data, fsdp, tensor) factorisation and ranks the ones that fit."""
from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np

from pathreasoner_jax.core.errors import UserError, one_line
from pathreasoner_jax.core.io import write_json
from pathreasoner_jax.pod.topology import GiB, Slice, parse_slice, slice_devices
from pathreasoner_jax.sharding import MESH_AXES, resolve_mesh_sizes

def topology_mesh(devices: list, data: int, fsdp: int, tensor: int, context: int = 1):
    """A Mesh over the slice's devices; axes laid on the physical torus when they can be
    (neighbouring chips share the inner `tensor` axis, then `context`), else in device order."""
    import jax
    from jax.experimental import mesh_utils
    from jax.sharding import Mesh
    d, f, t = _resolve(len(devices), data, fsdp, tensor, context)
    sizes = (d, f, context, t)
    try:
        arr = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    except (NotImplementedError, ValueError, AssertionError):
        arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)


def _resolve(n: int, data: int, fsdp: int, tensor: int, context: int = 1) -> tuple[int, int, int]:
    try:
        sizes = resolve_mesh_sizes(n, data, fsdp, tensor, context)
    except ValueError as e:
        raise UserError(f"{e} (the slice's devices)") from None
    if math.prod(sizes) * context != n:  # unlike a live run, a compile target uses the whole slice
        raise UserError(f"mesh: data*fsdp*context*tensor = {math.prod(sizes) * context} but the slice has {n} devices")
    return sizes


def compile_config(cfg, sl: Slice, stages, devices=None, log=print, layers_fit=None, dump_dir=None) -> dict:
    """Lowers and compiles `stages` of `cfg` on its mesh over the slice → report dict.
    `layers_fit` (A, B): compile with A and B decoder layers and extrapolate every figure
    linearly to the model's own count (a 28-layer 7B step takes an hour to compile on 2
    CPU cores; 1 and 2 layers a few minutes) — `analysis.extrapolate_part`. `dump_dir`:
    XLA's dumps of every compiled executable in `<dump_dir>/<stage>[_L<layers>]/<part>`."""
    from pathreasoner_jax import memory
    from pathreasoner_jax.models.factory import resolve_model_config
    from pathreasoner_jax.pod.analysis import extrapolate_part, stage_summary
    devices = devices if devices is not None else slice_devices(sl)
    mesh = topology_mesh(devices, cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.context)
    model_cfg = resolve_model_config(cfg.model)
    est = memory.estimate(cfg, dict(mesh.shape), sl.device_hbm_bytes, model_cfg=model_cfg)
    out = {"layers_fit": list(layers_fit) if layers_fit else None, "topology": sl.name,
           "libtpu_topology": sl.libtpu_name, "num_slices": sl.num_slices,
           "devices": sl.num_devices, "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape),
           "device_hbm_gib": sl.device_hbm_bytes / GiB, "peak_flops_per_device": sl.device_peak_flops,
           "memory_estimate_gib": {"train": est["train_total"] / GiB, "grpo": est["grpo_total"] / GiB,
                                   "rollout": est["rollout_total"] / GiB},
           "stages": {}}
    for stage in stages:
        log(f"compile: {stage} on {sl.name} mesh {dict(mesh.shape)} …")
        if layers_fit:
            la, lb = layers_fit
            pa, pb = (_parts(cfg, _with_layers(model_cfg, n), stage, mesh, sl, _sub(dump_dir, f"{stage}_L{n}"))
                      for n in (la, lb))
            parts = [extrapolate_part(a, b, la, lb, model_cfg.llm.num_layers, cfg, model_cfg, sl, dict(mesh.shape))
                     for a, b in zip(pa, pb)]
        else:
            parts = _parts(cfg, model_cfg, stage, mesh, sl, _sub(dump_dir, stage))
        out["stages"][stage] = stage_summary(stage, parts, sl)
    ref = {"sft": "train", "grpo": "grpo", "rollout": "rollout"}
    for stage, s in out["stages"].items():
        s["memory_estimate_gib"] = out["memory_estimate_gib"][ref[stage]]
        s["estimate_over_xla"] = s["memory_estimate_gib"] / s["peak_gib"] if s["peak_gib"] else None
    return out


def _sub(dump_dir, name):
    return os.path.join(dump_dir, name) if dump_dir else None


def _parts(cfg, model_cfg, stage, mesh, sl, dump_dir=None):
    from pathreasoner_jax.pod.analysis import analyse
    from pathreasoner_jax.pod.stages import lower_stage
    return [analyse(cfg, model_cfg, low, sl, _sub(dump_dir, low.name))
            for low in lower_stage(cfg, stage, mesh, model_cfg)]


def _with_layers(model_cfg, n: int):
    return dataclasses.replace(model_cfg, llm=dataclasses.replace(model_cfg.llm, num_layers=n))


def parse_layers_fit(text: str):
    if not text:
        return None
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--layers-fit: expected two layer counts A,B (e.g. 1,2), got {text!r}") from None
    if not 1 <= a < b:
        raise UserError(f"--layers-fit: need 1 <= A < B, got {a},{b}")
    return a, b


def format_report(rep: dict) -> str:
    m = rep["mesh"]
    fit = rep.get("layers_fit")
    lines = [(f"(figures extrapolated from compiles with {fit[0]} and {fit[1]} decoder layers)\n" if fit else "")
             + f"{rep['topology']} ({rep['libtpu_topology']}, {rep['devices']} × {rep['device_kind']}, "
             f"{rep['device_hbm_gib']:.0f} GiB each), mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}"
             + (f" context={m['context']}" if m.get("context", 1) > 1 else ""),
             f"{'stage/executable':<22}{'GiB/dev':>9}{'fits':>6}{'TFLOP xla':>11}{'analytic':>10}{'ICI GB':>9}"
             f"{'est s':>9}{'bound':>14}{'MFU':>7}{'compile s':>10}"]
    for stage, s in rep["stages"].items():
        for p in s["parts"]:
            calls = f" ×{p['calls_per_step']:g}" if p["calls_per_step"] != 1 else ""
            lines.append(f"{(stage + '/' + p['name'] + calls)[:22]:<22}{p['memory']['peak'] / GiB:>9.2f}{'':>6}"
                         f"{p['xla_flops'] / 1e12:>11.3f}{p['analytic_flops'] / 1e12:>10.3f}"
                         f"{p['ici_bytes'] / 1e9:>9.2f}{p['time']['estimate_s']:>9.3f}{p['time']['bound']:>14}"
                         f"{(p['mfu'] or 0):>7.1%}{p['compile_s']:>10.1f}")
            if p.get("largest_allocations"):
                lines.append("    largest heap allocations: " + "; ".join(
                    f"{a['bytes'] / GiB:.2f} GiB {a['shapes'][:60]}" for a in p["largest_allocations"][:3]))
        lines.append(f"{stage + ' (step)':<22}{s['peak_gib']:>9.2f}{'yes' if s['fits'] else 'NO':>6}{'':>30}"
                     f"{s['step_time_s']:>9.3f}{'':>14}{(s['mfu'] or 0):>7.1%}{s['compile_s']:>10.1f}"
                     f"   memory.py {s['memory_estimate_gib']:.2f} GiB")
    return "\n".join(lines)


def _load(args):
    # the host's own accelerator is not needed (the compile target is the topology); on a
    # machine without one, libtpu would otherwise first try to open a local TPU
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from pathreasoner_jax.config import load_config
    cfg = load_config(args.config, args.overrides)
    return cfg, parse_slice(args.topology, args.num_slices)


def run_compile(args) -> int:
    cfg, sl = _load(args)
    stages = ("sft", "grpo", "rollout") if args.stage == "all" else (args.stage,)
    print(f"compile: {sl.describe()}", flush=True)
    fit = parse_layers_fit(args.layers_fit)
    if fit and fit[1] >= cfg.model.llm.num_layers and not cfg.model.llm.hf_path:
        raise UserError(f"--layers-fit {args.layers_fit}: the model has only {cfg.model.llm.num_layers} layers")
    rep = compile_config(cfg, sl, stages, layers_fit=fit, dump_dir=args.dump_dir or None)
    print(format_report(rep))
    if args.json:
        write_json(args.json, rep)
        print(f"compile: wrote {args.json}")
    return 0 if all(s["fits"] for s in rep["stages"].values()) else 1


def candidate_meshes(n: int, batch_rows: int, max_tensor: int = 8) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor) with data·fsdp·tensor = n, tensor ≤ max_tensor, and the batch
    rows divisible by data·fsdp (training splits rows over both)."""
    out = []
    for t in [d for d in range(1, min(n, max_tensor) + 1) if n % d == 0]:
        rest = n // t
        for d in [x for x in range(1, rest + 1) if rest % x == 0]:
            f = rest // d
            if batch_rows % (d * f) == 0:
                out.append((d, f, t))
    return out


def _parse_meshes(text: str) -> list[tuple[int, int, int]]:
    try:
        return [tuple(int(x) for x in m.split("x")) for m in text.split(",")]
    except ValueError:
        raise UserError(f"--meshes: expected DATAxFSDPxTENSOR[,…], e.g. 1x8x1,2x4x1; got {text!r}") from None


def plan(cfg, sl: Slice, stage: str, meshes=None, progress: bool = True, devices=None,
         layers_fit=None) -> list[dict]:
    """Compiles `stage` for every candidate mesh → rows sorted: fitting ones by estimated
    step time first, then the ones that do not fit, then failures."""
    from pathreasoner_jax.core.progress import track
    from pathreasoner_jax.pod.stages import with_mesh
    devices = devices if devices is not None else slice_devices(sl)
    rows_per_step = cfg.sft.batch_size if stage == "sft" else cfg.grpo.prompts_per_step * cfg.grpo.group_size
    ctx = cfg.mesh.context  # kept as configured: the candidates factor the devices it leaves
    if len(devices) % ctx:
        raise UserError(f"plan: mesh.context={ctx} does not divide the slice's {len(devices)} devices")
    meshes = meshes or candidate_meshes(len(devices) // ctx, rows_per_step)
    if not meshes:
        raise UserError(f"plan: no (data, fsdp, tensor) of {len(devices)} devices divides the {rows_per_step} rows "
                        f"of a {stage} step; change sft.batch_size / grpo.prompts_per_step")
    rows = []
    for d, f, t in track(meshes, "plan", enabled=progress, unit="mesh"):
        c = with_mesh(cfg, d, f, t)
        row = {"mesh": {"data": d, "fsdp": f, "tensor": t, "context": ctx}}
        try:
            s = compile_config(c, sl, (stage,), devices, log=lambda *_: None, layers_fit=layers_fit)["stages"][stage]
            row.update(fits=s["fits"], peak_gib=s["peak_gib"], step_time_s=s["step_time_s"], mfu=s["mfu"],
                       bound=[p["time"]["bound"] for p in s["parts"]], compile_s=s["compile_s"])
        except Exception as e:  # XLA's refusal of one candidate is a result, not a crash
            row.update(fits=False, error=one_line(e, 200))
        rows.append(row)
    rank = lambda r: (0 if r.get("fits") else 1 if "error" not in r else 2, r.get("step_time_s") or math.inf)  # noqa: E731
    return sorted(rows, key=rank)


def format_plan(rows: list[dict]) -> str:
    lines = [f"{'rank':<5}{'data':>5}{'fsdp':>5}{'tensor':>7}{'fits':>6}{'GiB/dev':>9}{'est s':>9}{'MFU':>7}  bound"]
    for i, r in enumerate(rows, 1):
        m = r["mesh"]
        if "error" in r:
            lines.append(f"{i:<5}{m['data']:>5}{m['fsdp']:>5}{m['tensor']:>7}  failed: {r['error']}")
            continue
        lines.append(f"{i:<5}{m['data']:>5}{m['fsdp']:>5}{m['tensor']:>7}{'yes' if r['fits'] else 'NO':>6}"
                     f"{r['peak_gib']:>9.2f}{r['step_time_s']:>9.3f}{(r['mfu'] or 0):>7.1%}  {','.join(r['bound'])}")
    return "\n".join(lines)


def preset_yaml(rep_row: dict, sl: Slice, stage: str, config_path: str) -> str:
    m = rep_row["mesh"]
    return (f"# Written by `pathreasoner plan --config {config_path} --topology {sl.name} --stage {stage}`:\n"
            f"# the fastest fitting mesh by XLA's compiled figures for {sl.describe()}:\n"
            f"# {rep_row['peak_gib']:.2f} GiB per device, estimated {rep_row['step_time_s']:.3f} s per {stage} step, "
            f"MFU {(rep_row['mfu'] or 0):.1%} (roofline; pod/analysis.py).\n"
            f"mesh:\n  data: {m['data']}\n  fsdp: {m['fsdp']}\n  tensor: {m['tensor']}\n"
            + (f"  context: {m['context']}\n" if m.get("context", 1) > 1 else ""))


def run_plan(args) -> int:
    from pathreasoner_jax.core.io import write_bytes
    cfg, sl = _load(args)
    print(f"plan: {sl.describe()}", flush=True)
    rows = plan(cfg, sl, args.stage, _parse_meshes(args.meshes) if args.meshes else None, cfg.run.progress,
                layers_fit=parse_layers_fit(args.layers_fit))
    print(format_plan(rows))
    if args.json:
        write_json(args.json, {"topology": sl.name, "stage": args.stage, "candidates": rows})
    best = rows[0]
    if not best.get("fits"):
        print(f"plan: no candidate fits {sl.name}; see the table (more devices, model.remat=true, LoRA, "
              f"a smaller batch)", file=sys.stderr)
        return 1
    out = args.out or os.path.join(cfg.run.root, "plan", f"{cfg.run.name}_{sl.name}.yaml")
    write_bytes(out, preset_yaml(best, sl, args.stage, args.config).encode())
    print(f"plan: best mesh written to {out}")
    return 0
