"""`pathreasoner bench longslide`: whole-slide lengths with and without context parallelism.

For every N in `bench.longslide_patches` and C in `bench.longslide_contexts`, on a mesh
(data 1, fsdp 1, context C) of the first C devices (8 fake CPU devices in the tests and
here), with the config's model and one row of N patches + 64 text tokens:
- `longnet`: LongNet forward + backward (gradient of the summed output w.r.t. its weights);
- `vlm`: the SFT loss forward + backward of the whole VLM (every parameter);
- `prefill`: the rollout's prefill (slide tokens + prompt into the KV cache, first logits).
Each is compiled and reports XLA's per-device memory (arguments + outputs + temporaries
− aliased, from `memory_analysis()`); it is also timed (median of `bench.repeats` after
`bench.warmup`) when C × that figure is below `bench.longslide_run_gib`, so a run never
asks this machine for more memory than it has. Time on fake CPU devices shares the host's
cores: read it as the communication overhead of C-way splitting, not as a device's speed.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

GiB = float(1 << 30)
IMAGE_ID = 5
TEXT = 64


def _batch(n: int, vocab: int, c: int, dim: int, rng) -> dict:
    t = -(-(n + TEXT) // (8 * c)) * 8 * c
    ids = rng.integers(10, vocab, size=(1, t)).astype(np.int32)
    ids[0, 4:4 + n] = IMAGE_ID
    valid = np.zeros((1, t), bool)
    valid[0, :n + TEXT] = True
    weight = np.zeros((1, t), np.float32)
    weight[0, 4 + n:n + TEXT - 1] = 1.0
    return {"ids": ids, "text_valid": valid, "targets": np.roll(ids, -1, 1), "loss_weight": weight,
            "features": rng.standard_normal((1, n, dim)).astype(np.float32), "patch_valid": np.ones((1, n), bool)}


def _parts(graphdef, state):
    from pathreasoner_jax.models.qwen2 import init_cache, positions_from_valid
    from pathreasoner_jax.sft.loss import sft_loss

    def longnet(state, batch):
        def f(state):
            m = nnx.merge(graphdef, state)
            return jnp.sum(m.slide_encoder(batch["features"], batch["patch_valid"], m.ctx()))
        return jax.grad(f)(state)

    def vlm(state, batch):
        def f(state):
            m = nnx.merge(graphdef, state)
            s, n = sft_loss(m, batch, m.ctx())
            return s / n
        return jax.value_and_grad(f)(state)

    def prefill(state, batch):
        m = nnx.merge(graphdef, state)
        ctx = m.ctx()
        x, valid = m.embed_inputs(batch["ids"], batch["text_valid"], batch["features"], batch["patch_valid"], ctx)
        cache = init_cache(m.llm.d, x.shape[0], x.shape[1], ctx.dtype)
        hidden, cache = m.llm(x, positions_from_valid(valid), valid, ctx, cache)
        return m.llm.logits(hidden[:, -1]), cache["k"][0]
    return {"longnet": longnet, "vlm": vlm, "prefill": prefill}


def _memory(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def bench_longslide(cfg) -> dict:
    from pathreasoner_jax.models.factory import create_model, resolve_model_config
    from pathreasoner_jax.sharding import logical_to_spec, make_mesh, use_mesh
    from jax.sharding import NamedSharding
    b = cfg.bench
    mc = resolve_model_config(cfg.model, vocab_size=cfg.model.llm.vocab_size)
    rng = np.random.default_rng(cfg.run.seed)
    rows = []
    for n in b.longslide_patches:
        for c in b.longslide_contexts:
            mesh = make_mesh(1, 1, 1, devices=jax.devices()[:c], context=c)
            with use_mesh(mesh):
                model = create_model(mc, IMAGE_ID, mesh, seed=cfg.run.seed)
                graphdef, state = nnx.split(model)
                batch = _batch(n, mc.llm.vocab_size, c, mc.slide.feature_dim, rng)
                placed = {k: jax.device_put(v, NamedSharding(mesh, logical_to_spec(("batch",), v.shape[:1], mesh)))
                          for k, v in batch.items()}
                for name, fn in _parts(graphdef, state).items():
                    row = {"part": name, "patches": n, "context": c, "tokens": int(batch["ids"].shape[1])}
                    t = time.perf_counter()
                    compiled = jax.jit(fn).lower(state, placed).compile()
                    row["compile_s"] = round(time.perf_counter() - t, 2)
                    row["bytes_per_device"] = _memory(compiled)
                    if c * row["bytes_per_device"] <= b.longslide_run_gib * GiB:
                        times = []
                        for i in range(b.warmup + b.repeats):
                            t = time.perf_counter()
                            jax.block_until_ready(compiled(state, placed))
                            if i >= b.warmup:
                                times.append(time.perf_counter() - t)
                        row["median_s"] = round(float(np.median(times)), 4)
                    rows.append(row)
                    print(f"  {name:8s} N={n:6d} context={c}: {row['bytes_per_device'] / GiB:7.3f} GiB/device"
                          + (f", {row['median_s']:.3f} s" if "median_s" in row else " (not run: too large here)"),
                          flush=True)
    return {"cases": rows, "ratios": _ratios(rows)}


def _ratios(rows: list[dict]) -> list[dict]:
    """Per (part, N): memory per device and time at each context relative to context 1."""
    base = {(r["part"], r["patches"]): r for r in rows if r["context"] == 1}
    out = []
    for r in rows:
        one = base.get((r["part"], r["patches"]))
        if r["context"] == 1 or one is None:
            continue
        d = {"part": r["part"], "patches": r["patches"], "context": r["context"],
             "memory_fraction": round(r["bytes_per_device"] / one["bytes_per_device"], 4)}
        if "median_s" in r and "median_s" in one:
            d["time_ratio"] = round(r["median_s"] / one["median_s"], 3)
        out.append(d)
    return out
