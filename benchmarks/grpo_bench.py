"""`pathreasoner bench grpo`: one whole GRPO step, phase by phase, ours vs the PyTorch
reference layout, on identical weights in one process, rounds interleaved.

The step: rollout of `bench.batch` prompts × G completions of exactly `bench.new_tokens`
tokens (no EOS), a programmatic reward (the share of completion tokens ≡ 0 mod 7: cheap,
the same rule on both sides), group advantages, old and reference log-probs of the
completions, then `grpo.inner_epochs` updates (clipped ratio, token-mean, k3 KL as a loss
term, AdamW). Ours: the sampler with its shared prefix and the jitted passes of
`grpo/step.py`. PyTorch: HF `generate` with every prompt repeated G times, no-grad forwards
for old and reference log-probs, forward + backward + `torch.optim.AdamW` — the reference's
layout. Each phase is timed to completion (block_until_ready / CPU torch is synchronous).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import common as C

PHASES = ("rollout", "reward", "old_logprobs", "ref_logprobs", "update")


def _reward_jax(tokens, mask, g):
    from pathreasoner_jax.grpo.advantages import group_advantages
    r = jnp.sum((tokens % 7 == 0) * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1)
    return group_advantages(r.astype(jnp.float32), g, "group")[0]


def _ours(cfg, model, model_cfg, mesh, batch_np, g: int, n: int, shared_prefix: bool = True):
    """Our step as `grpo_iteration` runs it: with μ = 1 (and no KL folded into the rewards)
    the update takes its old log-probs from its own forward; the reference pass and the
    update run each prompt once and its G completions over its KV (`shared_prefix`; False:
    G full rows per prompt, the implementation before that change)."""
    from pathreasoner_jax.generate import SamplingParams, sample
    from pathreasoner_jax.grpo.step import assemble, make_grpo_step
    from pathreasoner_jax.train.params import trainable_filter
    from flax import nnx
    gc = dataclasses.replace(cfg.grpo, max_new_tokens=n, group_size=g, micro_batches=1)
    step, train, frozen, opt, ref = make_grpo_step(model, gc, trainable_filter(cfg.sft, model_cfg.lora.enabled),
                                                   mesh, model_cfg.lora.enabled)
    lp_fn, ref_fn, upd_fn = step.jit_all(train, frozen, opt)
    on_policy = gc.inner_epochs == 1 and gc.kl_mode != "reward"
    on_policy_fn = step.jit_on_policy_update(train, frozen, opt) if on_policy else None
    params = SamplingParams(max_new_tokens=n, temperature=gc.temperature, top_p=gc.top_p, top_k=gc.top_k,
                            group_size=g, shared_prefix=True)
    prompts = {k: jnp.asarray(batch_np[k]) for k in ("ids", "text_valid", "features", "patch_valid")}
    image_id = model_cfg.llm.vocab_size - 1
    reward = jax.jit(_reward_jax, static_argnums=2)
    state = {"train": train, "opt": opt}

    def run(i: int) -> dict:
        t, out = time.perf_counter(), {}

        def mark(name, value):
            nonlocal t
            jax.block_until_ready(value)
            now = time.perf_counter()
            out[name], t = now - t, now
            return value
        policy = nnx.merge(step.graphdef, state["train"], frozen)
        roll = mark("rollout", sample(policy, prompts["ids"], prompts["text_valid"], prompts["features"],
                                      prompts["patch_valid"], jax.random.key(i), params=params, eos_id=-1, pad_id=0))
        adv = mark("reward", reward(roll["tokens"], roll["mask"], g))
        seq = assemble(prompts, roll, g, image_id, shared_prefix)
        old = None if on_policy else lp_fn(state["train"], frozen, seq, None)
        mark("old_logprobs", old)
        refp = mark("ref_logprobs", ref_fn(ref, frozen, seq))
        for _ in range(gc.inner_epochs):
            if on_policy:
                state["train"], state["opt"], m = on_policy_fn(state["train"], frozen, state["opt"], seq, refp, adv,
                                                               None)
            else:
                state["train"], state["opt"], m = upd_fn(state["train"], frozen, state["opt"], seq, old, refp, adv,
                                                         None)
        mark("update", m["loss"])
        out["tokens"] = int(jnp.sum(roll["mask"]))
        return out
    return run


def _torch(cfg, tmodel, tref, model_cfg, batch_np, g: int, n: int, dev: str):
    import torch
    from benchmarks.torch_baseline.rollout import reference_rollout
    from benchmarks.torch_baseline.sft import autocast, set_trainable, to_torch_batch
    gc = cfg.grpo
    tb = to_torch_batch({k: batch_np[k] for k in ("ids", "text_valid", "features", "patch_valid")}, dev)
    params = set_trainable(tmodel, cfg.sft, model_cfg.lora.enabled)
    opt = torch.optim.AdamW(params, lr=gc.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=gc.weight_decay)
    image_id = model_cfg.llm.vocab_size - 1

    def completion_logp(model, seq):
        logits, _ = model(seq["ids"], seq["text_valid"], seq["features"], seq["patch_valid"])
        logits = logits[:, -n - 1:-1].float() / gc.temperature
        return torch.log_softmax(logits, -1).gather(-1, seq["ids"][:, -n:, None].long())[..., 0]

    def run(i: int) -> dict:
        torch.manual_seed(i)
        t, out = time.perf_counter(), {}

        def mark(name):
            nonlocal t
            C.torch_sync(dev)
            now = time.perf_counter()
            out[name], t = now - t, now
        tmodel.eval()
        tokens = reference_rollout(tmodel, tb["ids"], tb["text_valid"], tb["features"], tb["patch_valid"],
                                   group_size=g, max_new_tokens=n, temperature=gc.temperature, top_p=gc.top_p,
                                   top_k=gc.top_k, eos_id=-1, pad_id=0, compute_dtype=model_cfg.compute_dtype)
        mark("rollout")
        r = (tokens % 7 == 0).float().mean(1).view(-1, g)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1, 1)
        mark("reward")
        tokens = torch.where(tokens == image_id, torch.zeros_like(tokens), tokens)  # plain text, not slide slots
        rep = lambda x: x.repeat_interleave(g, 0)  # noqa: E731
        seq = {"ids": torch.cat([rep(tb["ids"]), tokens], 1),
               "text_valid": torch.cat([rep(tb["text_valid"]), torch.ones_like(tokens, dtype=torch.bool)], 1),
               "features": rep(tb["features"]), "patch_valid": rep(tb["patch_valid"])}
        with torch.no_grad(), autocast(dev, model_cfg.compute_dtype):
            old = completion_logp(tmodel, seq)
        mark("old_logprobs")
        with torch.no_grad(), autocast(dev, model_cfg.compute_dtype):
            refp = completion_logp(tref, seq)
        mark("ref_logprobs")
        tmodel.train()
        for _ in range(gc.inner_epochs):
            opt.zero_grad(set_to_none=True)
            with autocast(dev, model_cfg.compute_dtype):
                logp = completion_logp(tmodel, seq)
            ratio = torch.exp(logp - old)
            pg = -torch.minimum(ratio * adv, ratio.clamp(1 - gc.clip_eps_low, 1 + gc.clip_eps_high) * adv)
            d = (refp - logp).clamp(max=20.0)
            loss = (pg + gc.kl_beta * (torch.expm1(d) - d).clamp(max=10.0)).mean()
            loss.backward()
            if gc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, gc.grad_clip)
            opt.step()
        mark("update")
        out["tokens"] = int(tokens.numel())
        return out
    return run


def bench_grpo(cfg, baseline: str = "") -> dict:
    import copy
    from benchmarks.model import _setup
    sh, model_cfg, mesh, est, model, batch_np, torch_side = _setup(cfg, "rollout", baseline)
    g, n = sh["group_size"], sh["new_tokens"]
    sides = {}
    if torch_side is not None:  # the torch copies come from the weights before ours trains them
        tmodel, dev = torch_side
        sides["torch"] = _torch(cfg, tmodel, copy.deepcopy(tmodel).eval(), model_cfg, batch_np, g, n, dev)
    from flax import nnx
    graphdef, weights = nnx.split(model)  # own buffers: each side's update donates its weights
    twin = nnx.merge(graphdef, jax.tree.map(jnp.copy, weights))
    sides = {"ours": _ours(cfg, model, model_cfg, mesh, batch_np, g, n),
             "ours_full_rows": _ours(cfg, twin, model_cfg, mesh, batch_np, g, n, shared_prefix=False), **sides}
    rounds = {name: [] for name in sides}
    for r in range(cfg.bench.warmup + cfg.bench.repeats):
        for name, fn in sides.items():
            res = fn(r)
            res["load1"] = round(os.getloadavg()[0], 2)
            if r >= cfg.bench.warmup:
                rounds[name].append(res)
    work = sh["batch"] * g * n
    results = {}
    for name, rs in rounds.items():
        if any(x["tokens"] != work for x in rs):
            raise RuntimeError(f"bench grpo: {name} generated {[x['tokens'] for x in rs]} tokens, expected {work}")
        rec = {"rounds": rs}
        for ph in PHASES + ("step",):
            times = [sum(x[p] for p in PHASES) if ph == "step" else x[ph] for x in rs]
            rec[ph] = {"median_s": statistics.median(times), **C.spread(times)}
        results[name] = rec
    if "torch" in results:
        results["ours"]["step_time_vs_torch"] = results["ours"]["step"]["median_s"] / results["torch"]["step"]["median_s"]
    return {"shapes": sh, "mesh": dict(mesh.shape), "memory_estimate": est, "inner_epochs": cfg.grpo.inner_epochs,
            "results": results, "process_max_rss_bytes": C.process_max_rss_bytes()}


def phase_table(results: dict) -> str:
    names = list(results)
    w = [max(12, len(n) + 2) for n in names]
    lines = ["phase".ljust(14) + "".join(f"{n:>{k}}" for n, k in zip(names, w))]
    for ph in PHASES + ("step",):
        lines.append(ph.ljust(14) + "".join(f"{results[n][ph]['median_s'] * 1e3:>{k - 2}.0f}ms"
                                            for n, k in zip(names, w)))
    return "\n".join(lines)
