"""Per-device memory estimate of a config on a mesh, printed at start-up, with a clear
error when a preset cannot fit.

An estimate, not a measurement: `pathreasoner compile` gives XLA's own figure for a TPU
slice (and `--dump-dir` the buffers behind it). The terms follow what XLA's compiled
steps hold (buffer assignments of libtpu's SFT step, Qwen2.5-0.5B at 2048 and 4608
tokens, 1 and 2 rows per device; docs/scaling.md). Bytes per device, following the
sharding rules of `pathreasoner_jax.sharding`:
- params: LLM matrices and embeddings split over fsdp × tensor (every matrix has one
  `embed` dimension on fsdp and one heads/mlp/vocab dimension on tensor), norms and
  biases counted whole; LoRA A/B split over fsdp or tensor along their big dimension;
  LongNet replicated (`slide_*` axes map to no mesh axis); projector fc1 over fsdp,
  fc2 over fsdp × tensor. Divisibility fallbacks (replication) are ignored.
- grads and optimizer: per trainable parameter one gradient and AdamW's two moments, in
  the parameter dtype.
- activations of one SFT micro-batch (rows b = batch / (data·fsdp) / grad_accum, T
  tokens, compute dtype bytes c). One decoder layer's working set
  W = c·b·T·(4H + 2·nh·hd + 2·nkv·hd + 3I) (norm inputs/outputs, q/k/v, attention output,
  gate/up/product) + b·nh·T²·(4 + 2c) (XLA's attention holds the fp32 probabilities, a
  compute-dtype copy and its gradient; a flash kernel would not), heads/MLP parts
  divided by tensor. The loss: 2·4·b·T_l·V/tensor (fp32 logits and their gradient;
  T_l = `model.logits_chunk` when the sequence is longer, else T). With `model.remat`
  the backward passes through the loss and then one layer at a time, so the peak is
  L·R + max(W, loss), R = c·b·T·(H + 2.5·I/tensor) being what a rematerialised layer
  keeps: its input and — measured, not designed — two to three MLP-wide tensors more
  (libtpu's scheduler starts recomputations early: Qwen2.5-0.5B at 4608 tokens grows by
  153 MB per layer from 1 to 24 layers at 1 row per chip and by 209 MB at 2 rows; R = 120
  and 240 MB); without remat every layer's W is kept: L·W + loss. LongNet (fp32, not rematerialised):
  per layer 4·b·P·(6W + 3Fs) + per branch 4·b·h·n_pad·seg/r² (the softmax probabilities).
- gathered weights (fsdp > 1): each step all-gathers a layer's matrices before use (two
  layers in flight) and one V×H table whole (the LM head; the embedding lookup reads its
  own shard), in the compute dtype: c·(2·layer + V·H)/tensor.
- program: XLA's generated code, 256 MiB (libtpu: 0.11–0.17 GB for Qwen2.5-0.5B at 1 to 24
  layers; identical layers share their code).
- GRPO update: the same per micro-batch of rows p·G / grpo.micro_batches (p prompts per
  device) of T + N tokens, logits at the N completion positions only.
- KV cache (rollout, shared prefix): L·2·(p·T + p·G·n)·nkv·hd·c with p prompts per device
  (prompts_per_step / (data·fsdp)), nkv/tensor when divisible.
"""
from __future__ import annotations

import math

from pathreasoner_jax.flops import head_dim, lora_params
from pathreasoner_jax.core.errors import UserError

GiB = 1 << 30
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class MemoryFitError(UserError):
    """A preset does not fit the device memory; the message says by how much and what to change."""


def llm_param_count(llm) -> int:
    h, hd, nh, nkv, i = llm.hidden_size, head_dim(llm), llm.num_heads, llm.num_kv_heads, llm.intermediate_size
    layer = (h * nh * hd + nh * hd) + 2 * (h * nkv * hd + nkv * hd) + nh * hd * h + 3 * h * i + 2 * h
    head = 0 if llm.tie_word_embeddings else h * llm.vocab_size
    return llm.vocab_size * h + llm.num_layers * layer + h + head


def slide_param_count(slide) -> int:
    w, f = slide.width, slide.ffn_dim
    in_proj = slide.feature_dim * w + w if slide.feature_dim != w else 0
    layer = 4 * (w * w + w) + 3 * 2 * w + w * f + f + 2 * f + f * w + w
    return in_proj + slide.num_layers * layer + 2 * w


def projector_param_count(slide_width: int, hidden: int) -> int:
    return slide_width * hidden + hidden + hidden * hidden + hidden


def _mesh(mesh_shape) -> tuple[int, int, int]:
    if isinstance(mesh_shape, dict):
        return mesh_shape.get("data", 1), mesh_shape.get("fsdp", 1), mesh_shape.get("tensor", 1)
    return tuple(mesh_shape)[:3]


def _context(mesh_shape) -> int:
    if isinstance(mesh_shape, dict):
        return int(mesh_shape.get("context", 1))
    return int(mesh_shape[3]) if len(mesh_shape) > 3 else 1


def _sharded_params(model_cfg, fsdp: int, tensor: int) -> dict:
    """Parameter counts per device: llm (base), lora, slide, projector."""
    llm, s = model_cfg.llm, model_cfg.slide
    h = llm.hidden_size
    small = llm.num_layers * (2 * h + (llm.num_heads + 2 * llm.num_kv_heads) * head_dim(llm)) + h  # norms, biases
    llm_dev = (llm_param_count(llm) - small) / (fsdp * tensor) + small
    lora = lora_params(llm, model_cfg.lora)
    lora_dev = lora / min(fsdp, tensor)  # A and B: one big dimension each, on fsdp or tensor
    proj = s.width * h / fsdp + h * h / (fsdp * tensor) + 2 * h
    return {"llm": llm_dev, "lora": lora_dev, "slide": float(slide_param_count(s)), "projector": proj}


def _trainable(counts: dict, model_cfg, sft_cfg) -> float:
    frozen = set(sft_cfg.freeze)
    n = 0.0 if "slide_encoder" in frozen else counts["slide"]
    n += 0.0 if "projector" in frozen else counts["projector"]
    if "llm" not in frozen:
        lora_only = model_cfg.lora.enabled and sft_cfg.train_lora_only
        n += counts["lora"] if lora_only else counts["llm"] + counts["lora"]
    return n


def llm_activation_bytes(llm, rows: float, seq: int, c: int, tensor: int, remat: bool,
                         logit_positions: int | None = None, chunk: int = 0, context: int = 1) -> float:
    """Decoder layers and the loss of one micro-batch (module docstring). With `context`
    > 1 every per-token term holds seq/context tokens, the scores are (seq/context) × seq,
    and each layer adds its all-gathered K and V (the whole sequence)."""
    h, hd, i = llm.hidden_size, head_dim(llm), llm.intermediate_size
    local = seq / context
    work = c * rows * local * (4 * h + (2 * llm.num_heads * hd + 2 * llm.num_kv_heads * hd + 3 * i) / tensor)
    work += (4 + 2 * c) * rows * llm.num_heads * local * seq / tensor
    if context > 1:
        work += 2 * c * rows * seq * llm.num_kv_heads * hd / tensor
    pos = seq if logit_positions is None else logit_positions
    loss = 2 * 4 * rows * (min(pos, chunk) if chunk > 0 else pos) * llm.vocab_size / tensor / context
    if remat:
        # the per-layer residual spans the whole sequence even when it is split: measured
        # (7B, context 8: 1.815 GB a layer at 32k tokens, 2.037 GB at 64k, both exactly
        # c·rows·seq·(h + 2.5·i/tensor)), not designed — XLA keeps the saved MLP-wide
        # tensors gathered along `context`
        return llm.num_layers * c * rows * seq * (h + 2.5 * i / tensor) + max(work, loss)
    return llm.num_layers * work + loss


def longnet_activation_bytes(slide, rows: float, patches: int, context: int = 1) -> float:
    """fp32 LongNet activations; with `context` > 1 each device holds patches/context
    positions of every tensor (plus a spanning branch's gathered kept K/V, ≤ 2·N/r each)."""
    w, f = slide.width, slide.ffn_dim
    per_layer = 4 * rows * patches * (6 * w + 3 * f)
    gathered = 0.0
    for seg_len, r in zip(slide.segment_lengths, slide.dilations):
        seg = math.ceil(min(seg_len, patches) / r) * r
        n_pad = math.ceil(patches / seg) * seg
        per_layer += 4 * rows * slide.num_heads * n_pad * seg / (r * r)
        if context > 1 and seg > patches / context:
            gathered += 2 * 4 * rows * patches / r * w
    return slide.num_layers * (per_layer / context + gathered)


def gathered_weight_bytes(llm, c: int, fsdp: int, tensor: int) -> float:
    """FSDP's all-gathered copies alive at once (module docstring); 0 without fsdp."""
    if fsdp <= 1:
        return 0.0
    h, hd, i = llm.hidden_size, head_dim(llm), llm.intermediate_size
    layer = h * hd * (2 * llm.num_heads + 2 * llm.num_kv_heads) + 3 * h * i
    return c * (2 * layer + llm.vocab_size * h) / tensor


PROGRAM_BYTES = float(256 << 20)  # XLA's generated code (module docstring)


def kv_cache_bytes(llm, prompts: float, group: int, prompt_len: int, new_tokens: int, c: int, tensor: int,
                   context: int = 1) -> float:
    nkv = llm.num_kv_heads / tensor if llm.num_kv_heads % tensor == 0 else llm.num_kv_heads
    slots = prompts * prompt_len + prompts * group * new_tokens
    return llm.num_layers * 2 * slots * nkv * head_dim(llm) * c / context


def estimate(cfg, mesh_shape, device_bytes: int | None = None, *, seq_len: int | None = None,
             batch: int | None = None, patches: int | None = None, model_cfg=None) -> dict:
    """Bytes per device: params, grads, optimizer, activations, kv_cache, train_total,
    rollout_total, peak (the larger total), device_bytes, fits. `mesh_shape` is
    (data, fsdp, tensor) or a dict of them; `model_cfg` overrides `cfg.model` (resolved)."""
    mc = model_cfg or cfg.model
    data, fsdp, tensor = _mesh(mesh_shape)
    cp = _context(mesh_shape)
    p_bytes, c = _BYTES[mc.param_dtype], _BYTES[mc.compute_dtype]
    patches = patches if patches is not None else cfg.data.sample_num
    seq = seq_len if seq_len is not None else patches + cfg.data.max_text_len
    batch = batch if batch is not None else cfg.sft.batch_size
    counts = _sharded_params(mc, fsdp, tensor)
    params = p_bytes * sum(counts.values())
    trainable = _trainable(counts, mc, cfg.sft)
    rows = batch / (data * fsdp) / max(cfg.sft.grad_accum, 1)
    act = (llm_activation_bytes(mc.llm, rows, seq, c, tensor, mc.remat, chunk=mc.logits_chunk, context=cp)
           + longnet_activation_bytes(mc.slide, rows, patches, cp))
    g = cfg.grpo
    prompts = g.prompts_per_step / (data * fsdp)
    kv = kv_cache_bytes(mc.llm, prompts, g.group_size, seq, g.max_new_tokens, c, tensor, cp)
    # a GRPO update micro-batch: [prompt | completion] rows, logits only at the N completion positions
    g_rows = prompts * g.group_size / max(g.micro_batches, 1)
    g_act = (llm_activation_bytes(mc.llm, g_rows, seq + g.max_new_tokens, c, tensor, mc.remat,
                                  logit_positions=g.max_new_tokens, chunk=mc.logits_chunk, context=cp)
             + longnet_activation_bytes(mc.slide, g_rows, patches, cp))
    out = {"params": params, "grads": p_bytes * trainable, "optimizer": 2 * p_bytes * trainable,
           "activations": act, "grpo_activations": g_act, "kv_cache": kv,
           "gathered": gathered_weight_bytes(mc.llm, c, fsdp, tensor), "program": PROGRAM_BYTES,
           "mesh": {"data": data, "fsdp": fsdp, "tensor": tensor, "context": cp}, "seq_len": seq, "batch": batch,
           "patches": patches}
    state = params + out["grads"] + out["optimizer"]
    fixed = out["gathered"] + out["program"]
    out["train_total"] = state + act + fixed
    out["grpo_total"] = state + g_act + fixed
    out["rollout_total"] = params + kv + fixed
    out["peak"] = max(out["train_total"], out["grpo_total"], out["rollout_total"])
    out["device_bytes"] = device_bytes
    out["fits"] = None if not device_bytes else out["peak"] <= device_bytes
    return out


def format_estimate(est: dict) -> str:
    m = est["mesh"]
    parts = ", ".join(f"{k} {est[k] / GiB:.2f}" for k in ("params", "grads", "optimizer", "activations", "kv_cache",
                                                          "gathered", "program"))
    dev = f" of {est['device_bytes'] / GiB:.1f} GiB" if est.get("device_bytes") else ""
    return (f"memory estimate per device (GiB; mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}, "
            f"batch {est['batch']} × {est['seq_len']} tokens): {parts}; train {est['train_total'] / GiB:.2f}, "
            f"grpo update {est['grpo_total'] / GiB:.2f}, "
            f"rollout {est['rollout_total'] / GiB:.2f}, peak {est['peak'] / GiB:.2f}{dev}")


def check_fits(est: dict, headroom: float = 0.9) -> None:
    """Raises MemoryFitError when the peak exceeds `headroom` × device memory (unknown: no check)."""
    dev = est.get("device_bytes")
    if not dev or est["peak"] <= headroom * dev:
        return
    over = est["peak"] / (headroom * dev)
    raise MemoryFitError(
        f"this preset needs ~{est['peak'] / GiB:.1f} GiB per device but {headroom:.0%} of the device's "
        f"{dev / GiB:.1f} GiB is {headroom * dev / GiB:.1f} GiB ({over:.1f}× too much). {format_estimate(est)}. "
        f"Try: more FSDP/tensor sharding (mesh.fsdp=, mesh.tensor=, or a preset from configs/mesh/), "
        f"model.remat=true, a smaller sft.batch_size or more sft.grad_accum / grpo.micro_batches, "
        f"LoRA (model.lora.enabled=true), "
        f"fewer patches (data.sample_num=)")


def device_memory_bytes() -> int | None:
    """The first local device's memory limit; None where JAX does not report one (CPU)."""
    import jax
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # some backends do not implement memory_stats
        return None
    return stats.get("bytes_limit")


def report(cfg, mesh, model_cfg=None, check: bool = True, log=print, **shape) -> dict:
    """The start-up hook for `sft`/`grpo`/`bench`: prints the estimate, raises when it cannot fit.
    `shape`: seq_len / batch / patches overrides as in `estimate`."""
    est = estimate(cfg, dict(mesh.shape), device_memory_bytes(), model_cfg=model_cfg, **shape)
    log(format_estimate(est))
    if check:
        check_fits(est)
    return est
