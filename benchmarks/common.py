"""Shared pieces of `pathreasoner bench`: interleaved timing, peak memory, device and
version records, the torch baseline import."""
from __future__ import annotations

import importlib
import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Callable

import jax

from pathreasoner_jax.core.errors import UserError


def time_sides(sides: dict[str, Callable[[int], object]], warmup: int, repeats: int, profile_dir: str = "",
               profile_side: str = "ours") -> dict:
    """Calls every side `warmup` times (the first call compiles), then `repeats` timed rounds,
    interleaved side by side so that drift on a shared machine hits all sides alike.
    Each callable runs one step and returns only when its device work is done. With
    `profile_dir`, one more untimed call of `profile_side` runs under the JAX profiler."""
    out = {name: {"warmup_s": [], "times_s": []} for name in sides}
    step = 0
    for _ in range(max(warmup, 1)):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            res = fn(step)
            out[name]["warmup_s"].append(time.perf_counter() - t0)
            out[name].setdefault("first_result", res)
        step += 1
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn(step)
            out[name]["times_s"].append(time.perf_counter() - t0)
            out[name].setdefault("load1", []).append(round(os.getloadavg()[0], 2))
        step += 1
    if profile_dir and profile_side in sides:
        with jax.profiler.trace(profile_dir):
            sides[profile_side](step)
    for rec in out.values():
        rec["median_s"] = statistics.median(rec["times_s"]) if rec["times_s"] else None
        rec.update(spread(rec["times_s"]))
        rec["first_call_s"] = rec["warmup_s"][0]
    return out


def machine_load(sample_s: float = 0.5) -> dict:
    """What else runs on this machine: load averages, cores, and the busiest other
    processes over a `sample_s` window (this process and its children excluded). `quiet`:
    the others used under half a core in that window (the load averages lag by minutes and
    count this process, so they are recorded, not judged)."""
    import psutil
    me = psutil.Process()
    mine = {me.pid} | {c.pid for c in me.children(recursive=True)}
    procs = [p for p in psutil.process_iter(["name"]) if p.pid not in mine]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    busy = []
    for p in procs:
        try:
            busy.append((p.cpu_percent(None), p.pid, p.info.get("name") or ""))
        except psutil.Error:
            continue
    busy.sort(reverse=True)
    others = sum(b[0] for b in busy)
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    return {"loadavg_1_5_15": [round(x, 2) for x in load], "cpu_count": cores,
            "other_cpu_percent": round(others, 1),
            "busiest_others": [{"pid": pid, "name": name, "cpu_percent": round(pc, 1)}
                               for pc, pid, name in busy[:5] if pc >= 5.0],
            "quiet": others < 50.0}


def spread(times: list[float]) -> dict:
    """min, quartiles and max of a side's timed rounds (the median alone hides noise)."""
    if not times:
        return {}
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"min_s": min(times), "p25_s": q[0], "p75_s": q[2], "max_s": max(times)}


def jax_peak_bytes() -> int | None:
    """Peak bytes in use over the local devices (JAX's allocator); None where unreported."""
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # not implemented on some backends
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) if peaks else None


def process_max_rss_bytes() -> int:
    """Peak resident memory of this process so far (both frameworks together)."""
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def device_info() -> dict:
    devs = jax.devices()
    info = {"platform": devs[0].platform, "device_kind": devs[0].device_kind, "device_count": len(devs),
            "process_count": jax.process_count(), "cpu_count": os.cpu_count(), "machine": platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"model name\s*:\s*(.+)", f.read())
        info["cpu_model"] = names[0].strip() if names else platform.processor()
    except OSError:
        info["cpu_model"] = platform.processor()
    return info


def device_slug(info: dict) -> str:
    """File-name form of the device: cpu, nvidia-h100-80gb-hbm3, tpu-v5-lite-x8, ..."""
    slug = re.sub(r"[^a-z0-9]+", "-", info["device_kind"].lower()).strip("-") or info["platform"]
    return slug + (f"-x{info['device_count']}" if info["device_count"] > 1 else "")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:  # absent or broken: recorded as missing
            out[mod] = None
    return out


def import_torch_baseline():
    """`benchmarks.torch_baseline.transfer`, or a UserError when torch/transformers are missing."""
    try:  # import_module, not `from ... import`: it sees a module that failed or was blocked
        transfer = importlib.import_module("benchmarks.torch_baseline.transfer")
    except ImportError as e:
        raise UserError(f"--baseline torch needs torch and transformers ({e}); "
                        f"pip install -r requirements-dev.txt") from e
    return transfer


def torch_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def torch_peak_bytes(device: str) -> int | None:
    import torch
    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def summarize(rec: dict, work: float, flops: float | None, peak_flops: float | None, devices: int,
              unit: str = "tokens_per_s") -> dict:
    """Adds throughput (`work` per median call) and MFU (None without a known peak)."""
    med = rec["median_s"]
    rec[unit] = work / med if med else None
    rec["flops_per_call"] = flops
    rec["devices"] = devices
    rec["mfu"] = flops / med / (peak_flops * devices) if (flops and med and peak_flops) else None
    return rec
