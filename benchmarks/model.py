"""`pathreasoner bench sft` and `bench rollout`: our jitted step vs the PyTorch baseline on
identical weights, in one process, timed interleaved (see `benchmarks.common.time_sides`).

Inputs are random token ids of the model's vocabulary (no tokenizer needed): a row is
[4 text tokens | P image slots | text], P = bench.slide_tokens; the image token is the
last vocabulary id. Every patch is valid (a full slide). SFT puts loss weight on the
text after the slide. Rollouts never stop early (no EOS id), so both sides generate
exactly prompts × G × new_tokens tokens.
"""
from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import common as C
from pathreasoner_jax import flops as F, memory
from pathreasoner_jax.models.factory import create_model, resolve_model_config
from pathreasoner_jax.sharding import mesh_from_config, use_mesh

TEXT_BEFORE = 4  # prompt tokens before the slide (chat header)


def shapes(cfg, which: str) -> dict:
    """The benchmark's sizes, from `bench.*` with fallbacks to the rest of the config."""
    b = cfg.bench
    patches = b.slide_tokens or cfg.data.sample_num
    if which == "sft":
        return {"batch": b.batch or cfg.sft.batch_size, "seq_len": b.seq_len or patches + 64, "patches": patches}
    return {"batch": b.batch or cfg.grpo.prompts_per_step, "seq_len": b.seq_len or patches + 32,
            "patches": patches, "group_size": b.group_size or cfg.grpo.group_size,
            "new_tokens": b.new_tokens or cfg.grpo.max_new_tokens}


def random_batch(vocab: int, feature_dim: int, batch: int, seq: int, patches: int, seed: int = 0) -> dict:
    """numpy SFT batch (keys of `sft_loss`); ids in [0, vocab-1), image token vocab-1."""
    if seq < TEXT_BEFORE + patches + 2:
        raise ValueError(f"bench.seq_len {seq} leaves no text around {patches} slide tokens")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab - 1, (batch, seq)).astype(np.int32)
    ids[:, TEXT_BEFORE:TEXT_BEFORE + patches] = vocab - 1
    targets = np.concatenate([ids[:, 1:], np.zeros((batch, 1), np.int32)], 1)
    weight = np.zeros((batch, seq), np.float32)
    weight[:, TEXT_BEFORE + patches:-1] = 1.0
    from pathreasoner_jax.data.encode import loss_positions
    return {"ids": ids, "text_valid": np.ones((batch, seq), bool), "targets": targets, "loss_weight": weight,
            "features": rng.standard_normal((batch, patches, feature_dim)).astype(np.float32),
            "patch_valid": np.ones((batch, patches), bool), **loss_positions(weight)}


def _setup(cfg, which: str, baseline: str):
    sh = shapes(cfg, which)
    model_cfg = resolve_model_config(cfg.model)
    mesh = mesh_from_config(cfg.mesh)
    est = memory.report(cfg, mesh, model_cfg, seq_len=sh["seq_len"], batch=sh["batch"], patches=sh["patches"])
    with use_mesh(mesh):
        model = create_model(model_cfg, model_cfg.llm.vocab_size - 1, mesh, cfg.run.seed)
    batch = random_batch(model_cfg.llm.vocab_size, model_cfg.slide.feature_dim, sh["batch"], sh["seq_len"],
                         sh["patches"], cfg.run.seed)
    torch_side = None
    if baseline == "torch":  # copy the weights before our step donates (deletes) them
        tb = C.import_torch_baseline()
        dev = C.torch_device()
        tmodel = tb.torch_vlm_from_ours(model, model_cfg, dev)
        if model_cfg.remat:  # the same memory/compute trade as our per-layer remat
            tmodel.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch_side = (tmodel, dev)
    return sh, model_cfg, mesh, est, model, batch, torch_side


def _finish(cfg, sh, model_cfg, mesh, est, timings, work, flops, unit, torch_dev) -> dict:
    peak = F.device_peak_flops()
    for name, rec in timings.items():
        devices = 1 if name == "torch" else mesh.devices.size
        C.summarize(rec, work, flops, peak, devices, unit)
    if "torch" in timings:
        rec = timings["torch"]
        rec["torch_device"] = torch_dev
        rec["peak_memory_bytes"] = C.torch_peak_bytes(torch_dev)
        ours = timings["ours"]["median_s"]
        if rec["median_s"] and ours:
            timings["ours"]["speedup_vs_torch"] = rec["median_s"] / ours
    timings["ours"]["peak_memory_bytes"] = C.jax_peak_bytes()
    return {"shapes": sh, "mesh": dict(mesh.shape), "memory_estimate": est, "peak_flops_per_device": peak,
            "process_max_rss_bytes": C.process_max_rss_bytes(), "results": timings,
            "model_params": {"llm_matmul": F.llm_matmul_params(model_cfg.llm),
                             "lora": F.lora_params(model_cfg.llm, model_cfg.lora)}}


def bench_sft(cfg, baseline: str = "") -> dict:
    from pathreasoner_jax.sft.step import make_sft_step

    sh, model_cfg, mesh, est, model, batch_np, torch_side = _setup(cfg, "sft", baseline)
    repeats, warmup = cfg.bench.repeats, cfg.bench.warmup
    step, train, frozen, opt = make_sft_step(model, cfg.sft, model_cfg.lora.enabled, mesh,
                                             total_steps=warmup + repeats + 1)
    data_sh = NamedSharding(mesh, P(("data", "fsdp")))
    batch = jax.device_put(jax.tree.map(jnp.asarray, batch_np), data_sh)
    fn = step.jitted(train, frozen, opt, batch)
    state = {"train": train, "opt": opt}

    def ours(i):
        state["train"], state["opt"], m = fn(state["train"], frozen, state["opt"], batch, jax.random.key(i),
                                             jnp.int32(i))
        return float(jax.block_until_ready(m)["loss"])

    sides = {"ours": ours}
    if torch_side is not None:
        from benchmarks.torch_baseline.sft import make_torch_sft, to_torch_batch
        tmodel, dev = torch_side
        tstep, _ = make_torch_sft(tmodel, cfg.sft, model_cfg.lora.enabled, warmup + repeats + 1,
                                  model_cfg.compute_dtype)
        tbatch = to_torch_batch(batch_np, dev)

        def torch_side_fn(i):
            loss = tstep(tbatch)
            C.torch_sync(dev)
            return float(loss)
        sides["torch"] = torch_side_fn
    timings = C.time_sides(sides, warmup, repeats, cfg.bench.profile_dir)
    flops = F.sft_step_flops(model_cfg, cfg.sft, sh["batch"], sh["seq_len"], sh["patches"])
    out = _finish(cfg, sh, model_cfg, mesh, est, timings, sh["batch"] * sh["seq_len"], flops["convention"],
                  "tokens_per_s", torch_side[1] if torch_side else None)
    out["flops_per_step"] = flops
    for rec in timings.values():
        med = rec["median_s"]
        peak = out["peak_flops_per_device"]
        rec["mfu_executed"] = flops["executed"] / med / (peak * rec["devices"]) if (med and peak) else None
    return out


def bench_rollout(cfg, baseline: str = "") -> dict:
    from pathreasoner_jax.generate import SamplingParams, sample

    sh, model_cfg, mesh, est, model, batch_np, torch_side = _setup(cfg, "rollout", baseline)
    g, n = sh["group_size"], sh["new_tokens"]
    gc = cfg.grpo
    args = [jnp.asarray(batch_np[k]) for k in ("ids", "text_valid", "features", "patch_valid")]

    def ours_fn(shared: bool):
        params = SamplingParams(max_new_tokens=n, temperature=gc.temperature, top_p=gc.top_p, top_k=gc.top_k,
                                group_size=g, shared_prefix=shared)

        def run(i):  # not under use_mesh: the sampler's logits constraint rejects rank-2 logits there
            out = sample(model, *args, jax.random.key(i), params=params, eos_id=-1, pad_id=0)
            return int(jax.block_until_ready(out["lengths"]).sum())
        return run

    # ours_g_fold: our sampler with the reference's layout (each prompt prefilled G times)
    sides = {"ours": ours_fn(True), "ours_g_fold": ours_fn(False)}
    if torch_side is not None:
        from benchmarks.torch_baseline.rollout import reference_rollout
        from benchmarks.torch_baseline.sft import to_torch_batch
        tmodel, dev = torch_side
        tmodel.eval()
        tb = to_torch_batch({k: batch_np[k] for k in ("ids", "text_valid", "features", "patch_valid")}, dev)

        def torch_fn(i):
            out = reference_rollout(tmodel, tb["ids"], tb["text_valid"], tb["features"], tb["patch_valid"],
                                    group_size=g, max_new_tokens=n, temperature=gc.temperature, top_p=gc.top_p,
                                    top_k=gc.top_k, eos_id=-1, pad_id=0, compute_dtype=model_cfg.compute_dtype)
            C.torch_sync(dev)
            return int(out.numel())
        sides["torch"] = torch_fn
    timings = C.time_sides(sides, cfg.bench.warmup, cfg.bench.repeats, cfg.bench.profile_dir)
    work = sh["batch"] * g * n
    for name, rec in timings.items():
        if rec["first_result"] != work:
            raise RuntimeError(f"bench rollout: {name} generated {rec['first_result']} tokens, expected {work}")
    flops = F.rollout_flops(model_cfg, sh["batch"], g, sh["seq_len"], sh["patches"], n)
    out = _finish(cfg, sh, model_cfg, mesh, est, timings, work, flops, "tokens_per_s",
                  torch_side[1] if torch_side else None)
    if "torch" in timings and timings["ours_g_fold"]["median_s"]:
        timings["ours_g_fold"]["speedup_vs_torch"] = timings["torch"]["median_s"] / timings["ours_g_fold"]["median_s"]
    return out
