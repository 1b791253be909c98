"""Compile lowered stages and read XLA's own figures: per-device memory
(`memory_analysis`), FLOPs and bytes accessed (`cost_analysis`), collective traffic
(HLO text, `pod/hlo.py`), next to the analytic FLOPs of `flops.py`; then a roofline.

Peak bytes per device = arguments + outputs − aliased (donated state written in place)
+ temporaries + generated code (as MaxText's `train_compile` reports it).

Roofline of one executable: compute = XLA FLOPs / peak FLOP/s, memory = bytes accessed /
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


def analyse(cfg, model_cfg, lowered, sl: Slice) -> dict:
    """Compile one `pod.stages.Lowered` and report it (bytes and FLOPs per device)."""
    t0 = time.perf_counter()
    compiled = lowered.lowered.compile()
    compile_s = time.perf_counter() - t0
    n_dev = sl.num_devices
    mem, cost = memory_figures(compiled), cost_figures(compiled)
    rollout = lowered.name == "rollout"
    decode_steps = max(lowered.shapes.get("new_tokens", 1) - 1, 1) if rollout else 1
    coll = collective_bytes(compiled.as_text(), unknown_trip_count=decode_steps)
    model_flops = analytic_flops(cfg, model_cfg, lowered.name, lowered.shapes) / n_dev
    if rollout:
        prefill_s = prefill_flops(model_cfg, lowered.shapes) / n_dev / sl.device_peak_flops
        step_bytes = mem["arguments"] + mem["temporaries"]
        hbm_s = decode_steps * step_bytes / sl.device_hbm_bw
        ici_s = coll["ici_bytes"] / sl.device_ici_bw
        terms = {"compute_s": prefill_s, "hbm_s": hbm_s, "ici_s": ici_s}
        est = prefill_s + max(hbm_s, ici_s)
        bound = "hbm (decode)" if hbm_s >= ici_s else "ici (decode)"
    else:
        terms = {"compute_s": cost["flops"] / sl.device_peak_flops,
                 "hbm_s": cost["bytes_accessed"] / sl.device_hbm_bw,
                 "ici_s": coll["ici_bytes"] / sl.device_ici_bw}
        bound = max(terms, key=terms.get)[:-2]
        est = max(terms.values())
    return {"name": lowered.name, "calls_per_step": lowered.calls, "shapes": lowered.shapes,
            "compile_s": round(compile_s, 2), "memory": mem, "xla_flops": cost["flops"],
            "bytes_accessed": cost["bytes_accessed"], "analytic_flops": model_flops,
            "xla_over_analytic": (cost["flops"] / model_flops) if model_flops else None,
            "collectives": coll["by_kind"], "ici_bytes": coll["ici_bytes"],
            "time": dict(terms, estimate_s=est, bound=bound),
            "mfu": model_flops / (est * sl.device_peak_flops) if est > 0 else None}


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
