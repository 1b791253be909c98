"""`pathreasoner bench clip`: one Patho-CLIP training step, ours vs open_clip, same weights.

The model is `clip.preset` sized by `clip.image_size` / `clip.context_length` (random init,
open_clip's conventions: exact GELU, pooling at the largest token id); open_clip's `CLIP`
loads our weights (convert.openclip_state), so both sides start equal. A step: forward of
`bench.batch` (0: clip.batch_size) image–caption pairs, InfoNCE over the batch, backward,
AdamW (β2 0.98, ε 1e-6, decay on matrices), logit-scale clamp; no gradient clipping (open_clip's
default). Ours is the jitted `ClipStep` on the config's mesh; open_clip is eager PyTorch as its
train loop runs it (fp32, no autocast on CPU). Sides interleaved (common.time_sides).
FLOPs: 6 × parameters × tokens per tower, plus attention's 12 · layers · T² · width.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common as C


def _model_config(cfg):
    from pathreasoner_jax.clip.model import PRESETS
    c = PRESETS[cfg.clip.preset]
    over = {k: getattr(cfg.clip, k) for k in ("image_size", "context_length") if getattr(cfg.clip, k)}
    return dataclasses.replace(c, pool="argmax", act="gelu", eos_token_id=c.vocab_size - 1, **over)


def _batch(c, b: int, seed: int):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, c.vocab_size - 1, (b, c.context_length)).astype(np.int32)
    lengths = rng.integers(3, c.context_length + 1, b)
    for i, n in enumerate(lengths):  # end of text (the largest id) then zeros, as open_clip's tokenizer
        tokens[i, n - 1], tokens[i, n:] = c.vocab_size - 1, 0
    pixels = rng.standard_normal((b, c.image_size, c.image_size, 3)).astype(np.float32)
    return {"pixels": pixels, "tokens": tokens, "token_mask": np.ones_like(tokens)}


def step_flops(c, b: int) -> float:
    def tower(t, tokens):
        per_layer = 4 * t.width * t.width + 2 * t.width * t.mlp_dim
        return 6 * per_layer * t.layers * tokens + 12 * t.layers * tokens * tokens * t.width
    img = tower(c.vision, c.num_patches + 1) + 6 * c.patch_size ** 2 * 3 * c.vision.width * c.num_patches
    txt = tower(c.text, c.context_length)
    return float(b * (img + txt))


def bench_clip(cfg, baseline: str) -> dict:
    from flax import nnx
    from pathreasoner_jax.clip.convert import openclip_state
    from pathreasoner_jax.clip.model import build_clip
    from pathreasoner_jax.clip.step import make_clip_step
    from pathreasoner_jax.flops import device_peak_flops
    from pathreasoner_jax.sharding import mesh_from_config, shard_state, use_mesh
    from pathreasoner_jax.train.stage import shard_rows

    c = _model_config(cfg)
    b = cfg.bench.batch or cfg.clip.batch_size
    clip_cfg = dataclasses.replace(cfg.clip, grad_clip=0.0, warmup_ratio=0.0, loss="infonce")
    mesh = mesh_from_config(cfg.mesh)
    model = build_clip(c, seed=cfg.run.seed)
    state_np = openclip_state(model) if baseline else None
    with use_mesh(mesh):
        nnx.update(model, shard_state(nnx.state(model), mesh))
    steps = cfg.bench.warmup + cfg.bench.repeats + 1
    step, params, opt = make_clip_step(model, clip_cfg, mesh, steps)
    host = [_batch(c, b, cfg.run.seed + k) for k in range(2)]
    batches = [shard_rows(h, mesh) for h in host]
    jitted = step.jitted(params, opt, batches[0])
    state = {"params": params, "opt": opt}

    def ours(k):
        p, o, m = jitted(state["params"], state["opt"], batches[k % 2], jnp.int32(k))
        state["params"], state["opt"] = p, o
        return float(m["loss"])  # float() waits for the step

    sides = {"ours": ours}
    if baseline:
        C.import_torch_baseline()
        from benchmarks.torch_baseline.clip_openclip import build_openclip, load_state, train_step_fn
        oc = build_openclip(dict(image_size=c.image_size, patch_size=c.patch_size, vision_width=c.vision.width,
                                 vision_layers=c.vision.layers, vision_heads=c.vision.heads,
                                 vision_mlp_dim=c.vision.mlp_dim, vocab_size=c.vocab_size,
                                 context_length=c.context_length, text_width=c.text.width, text_layers=c.text.layers,
                                 text_heads=c.text.heads, text_mlp_dim=c.text.mlp_dim, embed_dim=c.embed_dim,
                                 quick_gelu=False))
        load_state(oc, state_np)
        torch_step = train_step_fn(oc, clip_cfg.lr, clip_cfg.weight_decay)
        torch_batches = [(np.ascontiguousarray(h["pixels"].transpose(0, 3, 1, 2)), h["tokens"].astype(np.int64))
                         for h in host]
        sides["torch"] = lambda k: torch_step(*torch_batches[k % 2])
    timings = C.time_sides(sides, cfg.bench.warmup, cfg.bench.repeats, cfg.bench.profile_dir)
    flops, peak = step_flops(c, b), device_peak_flops()
    for rec in timings.values():
        C.summarize(rec, b, flops, peak, jax.device_count(), unit="images_per_s")
    if baseline:
        # the first step's loss on identical weights and batch: the two sides compute the same thing
        timings["ours"]["first_loss"] = timings["ours"].pop("first_result")
        timings["torch"]["first_loss"] = timings["torch"].pop("first_result")
        timings["ours"]["speedup_vs_torch"] = timings["torch"]["median_s"] / timings["ours"]["median_s"]
    else:
        timings["ours"]["first_loss"] = timings["ours"].pop("first_result")
    shape = {"batch": b, "image_size": c.image_size, "patch_size": c.patch_size, "context_length": c.context_length,
             "vision": dataclasses.asdict(c.vision), "text": dataclasses.asdict(c.text), "embed_dim": c.embed_dim,
             "grad_accum": clip_cfg.grad_accum, "mesh": dict(mesh.shape), "dtype": cfg.clip.compute_dtype}
    return {"shape": shape, "results": timings, "peak_rss_bytes": C.process_max_rss_bytes()}
