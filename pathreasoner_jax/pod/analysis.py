"""Compile lowered stages and read XLA's own figures: per-device memory
(`memory_analysis`), FLOPs and bytes accessed (`cost_analysis`), collective traffic
(HLO text, `pod/hlo.py`), next to the analytic FLOPs of `flops.py`; then a roofline.

Peak bytes per device = arguments + outputs − aliased (donated state written in place)
+ temporaries + generated code (as MaxText's `train_compile` reports it).

XLA's `cost_analysis` counts a loop body once: the chunked logits (`model.logits_chunk`, a
scan) and gradient accumulation (a scan over micro-batches) are under-counted there, so
the compute term takes the larger of XLA's count and the analytic one (`flops.py`); both
are reported, and XLA's exceeding the analytic count shows recomputation (remat). The
micro-batch scan (`sft.grad_accum`, `grpo.micro_batches`) wraps the whole forward and
backward, so XLA's FLOPs and bytes accessed are multiplied by its trip count for the
compute and HBM terms (over-counting the once-per-step optimizer update a little);
collective bytes already count while loops by their trip counts (`pod/hlo.py`).

Roofline of one executable: compute = that FLOP count / peak FLOP/s, memory = bytes accessed /
HBM bandwidth, ICI = collective bytes / ICI bandwidth (pod/topology.py); the estimate is
the largest of the three (XLA overlaps FSDP's async all-gathers with compute on TPU), so
it is a lower bound on step time: a stage bound by ICI or HBM shows it. MFU = analytic
model FLOPs / (estimate × peak): recomputation (remat) counts as cost, not as useful work.

The rollout's decode loop runs an unknown number of times (rows stop at EOS); XLA's cost
analysis counts a loop body once. Its estimate is therefore prefill compute (analytic
FLOPs of the slide encoder and prompt) + N decode steps, each reading the parameters
and the KV cache (arguments + temporaries of the executable) at HBM bandwidth, or its
collectives at ICI bandwidth, whichever is slower: decoding is memory bound.
"""
from __future__ import annotations

import time

from pathreasoner_jax import flops as F
from pathreasoner_jax.pod.buffers import dump_options, largest_allocations, report_path
from pathreasoner_jax.pod.hlo import collective_bytes
from pathreasoner_jax.pod.topology import GiB, Slice


def memory_figures(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
           "generated_code": m.generated_code_size_in_bytes}
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["generated_code"]
    return out


def cost_figures(compiled) -> dict:
    ca = compiled.cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, (list, tuple)) else (ca or {})
    return {"flops": float(ca.get("flops", 0.0)), "bytes_accessed": float(ca.get("bytes accessed", 0.0))}


def analytic_flops(cfg, model_cfg, name: str, shapes: dict) -> float:
    """Model FLOPs of one call of executable `name`, all devices together."""
    if name == "sft_step":
        return F.sft_step_flops(model_cfg, cfg.sft, shapes["batch"], shapes["seq_len"], shapes["patches"])["executed"]
    seq = shapes["prompt_len"] + shapes["new_tokens"]
    if name == "grpo_logprobs":
        return F.forward_pass_flops(model_cfg, shapes["rows"], seq, shapes["patches"], shapes["new_tokens"])
    if name == "grpo_update":
        return F.sft_step_flops(model_cfg, cfg.sft, shapes["rows"], seq, shapes["patches"],
                                logit_positions=shapes["new_tokens"])["executed"]
    if name == "rollout":
        return F.rollout_flops(model_cfg, shapes["prompts"], shapes["group_size"], shapes["prompt_len"],
                               shapes["patches"], shapes["new_tokens"])
    raise KeyError(name)


def prefill_flops(model_cfg, shapes: dict) -> float:
    return F.rollout_flops(model_cfg, shapes["prompts"], 1, shapes["prompt_len"], shapes["patches"], 0)


def analyse(cfg, model_cfg, lowered, sl: Slice, dump_dir: str | None = None) -> dict:
    """Compile one `pod.stages.Lowered` and report it (bytes and FLOPs per device). With
    `dump_dir`, XLA dumps the compiled module there and its largest heap allocations
    (`pod/buffers.py`) join the report."""
    t0 = time.perf_counter()
    compiled = lowered.lowered.compile(compiler_options=dump_options(dump_dir) if dump_dir else None)
    compile_s = time.perf_counter() - t0
    mem, cost = memory_figures(compiled), cost_figures(compiled)
    decode_steps = max(lowered.shapes.get("new_tokens", 1) - 1, 1) if lowered.name == "rollout" else 1
    coll = collective_bytes(compiled.as_text(), unknown_trip_count=decode_steps)
    part = {"name": lowered.name, "calls_per_step": lowered.calls, "shapes": lowered.shapes,
            "compile_s": round(compile_s, 2), "memory": mem, "xla_flops": cost["flops"],
            "bytes_accessed": cost["bytes_accessed"], "collectives": coll["by_kind"], "ici_bytes": coll["ici_bytes"]}
    report = report_path(dump_dir) if dump_dir else None
    if report:
        with open(report) as f:
            part["largest_allocations"] = largest_allocations(f.read())
    return roofline(part, cfg, model_cfg, sl)


def micro_batch_loops(shapes: dict) -> int:
    """Trip count of the micro-batch scan that wraps an executable's forward and backward."""
    return int(shapes.get("micro_batches") or shapes.get("grad_accum") or 1)


def roofline(part: dict, cfg, model_cfg, sl: Slice) -> dict:
    """Adds analytic FLOPs, the time terms, the estimate and MFU to a measured part."""
    model_flops = analytic_flops(cfg, model_cfg, part["name"], part["shapes"]) / sl.num_devices
    mem = part["memory"]
    if part["name"] == "rollout":
        decode_steps = max(part["shapes"]["new_tokens"] - 1, 1)
        prefill_s = prefill_flops(model_cfg, part["shapes"]) / sl.num_devices / sl.device_peak_flops
        hbm_s = decode_steps * (mem["arguments"] + mem["temporaries"]) / sl.device_hbm_bw
        ici_s = part["ici_bytes"] / sl.device_ici_bw
        terms = {"compute_s": prefill_s, "hbm_s": hbm_s, "ici_s": ici_s}
        est = prefill_s + max(hbm_s, ici_s)
        bound = "hbm (decode)" if hbm_s >= ici_s else "ici (decode)"
    else:
        loops = micro_batch_loops(part["shapes"])
        terms = {"compute_s": max(part["xla_flops"] * loops, model_flops) / sl.device_peak_flops,
                 "hbm_s": part["bytes_accessed"] * loops / sl.device_hbm_bw,
                 "ici_s": part["ici_bytes"] / sl.device_ici_bw}
        bound = max(terms, key=terms.get)[:-2]
        est = max(terms.values())
    return dict(part, analytic_flops=model_flops,
                xla_over_analytic=(part["xla_flops"] / model_flops) if model_flops else None,
                time=dict(terms, estimate_s=est, bound=bound),
                mfu=model_flops / (est * sl.device_peak_flops) if est > 0 else None)


LINEAR = ("xla_flops", "bytes_accessed", "ici_bytes")


def layer_residual_bytes(name: str, shapes: dict, model_cfg, mesh_shape: dict) -> float:
    """What one more decoder layer adds to an executable's temporaries, per device: the
    activations a layer keeps for the backward pass (`memory.llm_activation_bytes` at L+1
    minus at L), the KV cache a rollout keeps, nothing for a forward-only log-prob pass."""
    import dataclasses
    from pathreasoner_jax import memory
    llm, c = model_cfg.llm, memory._BYTES[model_cfg.compute_dtype]
    split = mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    tensor = mesh_shape.get("tensor", 1)
    if name == "grpo_logprobs":
        return 0.0
    if name == "rollout":
        return memory.kv_cache_bytes(dataclasses.replace(llm, num_layers=1), shapes["prompts"] / split,
                                     shapes["group_size"], shapes["prompt_len"], shapes["new_tokens"], c, tensor)
    if name == "sft_step":
        rows, seq = shapes["batch"] / split / max(shapes.get("grad_accum", 1), 1), shapes["seq_len"]
    else:  # grpo_update
        rows = shapes["rows"] / split / max(shapes.get("micro_batches", 1), 1)
        seq = shapes["prompt_len"] + shapes["new_tokens"]
    act = [memory.llm_activation_bytes(dataclasses.replace(llm, num_layers=n), rows, seq, c, tensor, model_cfg.remat)
           for n in (1, 2)]
    return act[1] - act[0]


def extrapolate_memory(a: dict, b: dict, la: int, lb: int, layers: int, residual: float) -> dict:
    """Memory figures at `layers` from the compiles at `la` and `lb` (see `extrapolate_part`):
    arguments, outputs and aliasing linear; temporaries the smaller of the two compiles'
    upper bounds; generated code the larger of the two (identical layers share their
    code: 0.5B's is 0.17 GB at 3 layers and at 24)."""
    w = (layers - la) / (lb - la)
    mem = {k: a[k] + (b[k] - a[k]) * w for k in ("arguments", "outputs", "aliased")}
    mem["generated_code"] = max(a["generated_code"], b["generated_code"])
    mem["temporaries"] = min(a["temporaries"] + (layers - la) * residual, b["temporaries"] + (layers - lb) * residual)
    mem["peak"] = mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"] + mem["generated_code"]
    return mem


def extrapolate_part(a: dict, b: dict, la: int, lb: int, layers: int, cfg, model_cfg, sl: Slice,
                     mesh_shape: dict) -> dict:
    """The part at `layers` decoder layers from compiles at `la` and `lb`. FLOPs, bytes
    accessed, collectives, arguments and outputs are a + (b − a)·(L − la)/(lb − la)
    (the layers are identical and unrolled, so each adds the same parameters, FLOPs and
    collectives; XLA's generated code stops growing after a few layers and is taken as the
    larger compile's). Temporaries are not: XLA's heap is the largest working set at any one
    time plus what the layers keep, and its packing of the large attention buffers moves
    by a layer's working set between compiles (Qwen2.5-0.5B at 4608 tokens: 3.94, 6.33,
    6.13 GiB at 1, 2, 3 layers; 7.21 GiB at its 24), so a line through two compiles can
    be off by that times L (that line said 59 GiB; at 2 rows per chip it fell instead,
    to 4.6 GiB where the 24-layer compile has 11.4). Packing only adds, so each compile
    + (L − its layers) × what one more layer keeps (`layer_residual_bytes`, memory.py's
    R) bounds the heap from above and the smaller of the two is taken: 6.52 and 11.7 GiB
    there (−10%, +3%); the rest is recomputed."""
    w = (layers - la) / (lb - la)
    lin = lambda x, y: x + (y - x) * w  # noqa: E731
    part = {k: v for k, v in b.items() if k in ("name", "calls_per_step", "shapes", "largest_allocations")}
    residual = layer_residual_bytes(b["name"], b["shapes"], model_cfg, mesh_shape)
    part["memory"] = extrapolate_memory(a["memory"], b["memory"], la, lb, layers, residual)
    part.update({k: lin(a[k], b[k]) for k in LINEAR})
    part["collectives"] = {k: {f: lin(a["collectives"].get(k, {}).get(f, 0), v[f]) for f in v}
                           for k, v in b["collectives"].items()}
    part["compile_s"] = a["compile_s"] + b["compile_s"]
    part["extrapolated_from_layers"] = [la, lb]
    part["layer_compiles"] = {str(la): a["memory"], str(lb): b["memory"], "residual_per_layer": residual}
    return roofline(part, cfg, model_cfg, sl)


def stage_summary(stage: str, parts: list[dict], sl: Slice) -> dict:
    """A stage's executables together: peak = the largest executable's (they run in turn),
    step time = Σ calls × estimate, MFU over the step."""
    peak = max(p["memory"]["peak"] for p in parts)
    step_s = sum(p["calls_per_step"] * p["time"]["estimate_s"] for p in parts)
    work = sum(p["calls_per_step"] * p["analytic_flops"] for p in parts)
    return {"stage": stage, "parts": parts, "peak_bytes": peak, "peak_gib": peak / GiB,
            "device_hbm_gib": sl.device_hbm_bytes / GiB, "fits": peak <= sl.device_hbm_bytes,
            "step_time_s": step_s, "mfu": work / (step_s * sl.device_peak_flops) if step_s > 0 else None,
            "compile_s": sum(p["compile_s"] for p in parts)}
