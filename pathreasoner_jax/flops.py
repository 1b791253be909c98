"""FLOP counts for MFU (the trainer's per-token count, the benchmarked SFT step and rollout)
and the peak FLOP/s of known accelerators.

Training FLOPs per token (the trainer's MFU) = 6·N + 12·L·T·(heads·head_dim): N the LLM's
matmul parameters (attention and MLP projections of every layer, plus the output head;
embeddings are a lookup), the factor 6 for forward (2) + backward (4); the second term is
attention scores and values (2·2·T·d per layer forward, ×3 with backward) at sequence
length T (PaLM appendix B). The LongNet slide encoder adds < 1% at the paper's sizes and
is left out there.

The benchmarked steps (`pathreasoner bench`) count more exactly; both sides of a
benchmark get the same count, so MFU ratios equal speed ratios.

Notation: LLM with L layers, width H, MLP width I, nh query / nkv key-value heads of
size hd, vocabulary V; LongNet with Ls layers, width W, FFN Fs, input F; P slide tokens,
T tokens per row, B rows. A multiply-add is 2 FLOPs.

- LLM matmul weights N_mm = L·(2·H·nh·hd + 2·H·nkv·hd + 3·H·I) + H·V (lm head);
  LoRA adds r·(in + out) per adapted linear, N_lora.
- SFT step, `convention` (the trainer's): 6·N_mm·B·T + 12·L·B·T²·nh·hd (PaLM), plus the
  slide encoder and projector (see below).
  `executed`: forward 2·N·B·T, backward 2·N·B·T for activation gradients (always: the
  slide encoder under the LLM trains) + 2·N_w·B·T for the weight gradients of trained
  LLM weights only (N = N_mm + N_lora; N_w = N in full fine-tuning, N_lora with LoRA).
  With LoRA the convention overstates the work by up to a third; both are reported.
- LongNet (trained fully): 6·N_ls·B·P with N_ls = [F·W] + Ls·(4·W² + 2·W·Fs); dilated
  attention per layer and branch (w, r): forward 4·W·n_pad·seg/r² per row (every head
  attends within seg/r kept positions in each of n_pad/seg segments), ×3 with backward.
  Projector: 6·(W·H + H²)·B·P.
- Rollout of B prompts × G completions of n tokens after a T-token prompt: the slide
  encoder and the prompt prefill once per prompt (logits at the last position only),
  then per generated token 2·N + 4·L·nh·hd·context. The reference's G-fold prefill is
  extra work and is not counted.
"""
from __future__ import annotations

import math

import jax

# dense bf16 peak per chip (vendor datasheets)
PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12, "tpu v5 lite": 197e12,
             "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v4": 275e12, "tpu v6": 918e12}


def head_dim(llm) -> int:
    return llm.head_dim or llm.hidden_size // llm.num_heads


def llm_matmul_params(llm) -> int:
    hd = head_dim(llm)
    d = llm.hidden_size
    per_layer = 2 * d * llm.num_heads * hd + 2 * d * llm.num_kv_heads * hd + 3 * d * llm.intermediate_size
    return llm.num_layers * per_layer + d * llm.vocab_size


def train_flops_per_token(model_cfg, seq_len: int) -> float:
    llm = model_cfg.llm
    hd = head_dim(llm)
    return 6.0 * llm_matmul_params(llm) + 12.0 * llm.num_layers * seq_len * llm.num_heads * hd


def forward_flops_per_token(model_cfg, context_len: int) -> float:
    llm = model_cfg.llm
    hd = head_dim(llm)
    return 2.0 * llm_matmul_params(llm) + 4.0 * llm.num_layers * context_len * llm.num_heads * hd


def device_peak_flops(device=None) -> float | None:
    """Peak bf16 FLOP/s of one device, None when unknown (CPU)."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for key, val in PEAK_BF16.items():
        if key in kind:
            return val
    return None


def lora_params(llm, lora) -> int:
    if not lora.enabled:
        return 0
    h, hd, i = llm.hidden_size, head_dim(llm), llm.intermediate_size
    shapes = {"q_proj": (h, llm.num_heads * hd), "k_proj": (h, llm.num_kv_heads * hd),
              "v_proj": (h, llm.num_kv_heads * hd), "o_proj": (llm.num_heads * hd, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return llm.num_layers * sum(lora.rank * sum(shapes[t]) for t in lora.targets if t in shapes)


def longnet_matmul_params(slide) -> int:
    w = slide.width
    n = slide.feature_dim * w if slide.feature_dim != w else 0
    return n + slide.num_layers * (4 * w * w + 2 * w * slide.ffn_dim)


def longnet_attention_fwd(slide, n: int) -> int:
    """Forward FLOPs of the dilated attention of all layers for one row of n patches."""
    total = 0
    for w, r in zip(slide.segment_lengths, slide.dilations):
        seg = math.ceil(min(w, n) / r) * r
        n_pad = math.ceil(n / seg) * seg
        total += 4 * slide.width * n_pad * seg // (r * r)
    return slide.num_layers * total


def slide_fwd(model_cfg, batch: int, patches: int) -> int:
    """LongNet + projector forward FLOPs for `batch` slides of `patches` tokens."""
    s, h = model_cfg.slide, model_cfg.llm.hidden_size
    dense = 2 * (longnet_matmul_params(s) + s.width * h + h * h) * batch * patches
    return dense + batch * longnet_attention_fwd(s, patches)


def sft_step_flops(model_cfg, sft_cfg, batch: int, seq: int, patches: int, logit_positions: int | None = None) -> dict:
    """{"convention", "executed"}: model FLOPs of one SFT step on `batch` rows of `seq`
    tokens holding `patches` slide tokens (module docstring). `logit_positions`: positions
    per row that go through the output head (GRPO's update: the completion only; default
    all `seq`)."""
    llm, lora = model_cfg.llm, model_cfg.lora
    head = llm.hidden_size * llm.vocab_size
    head_saving = 6 * head * batch * (seq - logit_positions) if logit_positions is not None else 0
    n = llm_matmul_params(llm) + lora_params(llm, lora)
    frozen = set(sft_cfg.freeze)
    lora_only = lora.enabled and sft_cfg.train_lora_only
    n_w = 0 if "llm" in frozen else (lora_params(llm, lora) if lora_only else n)
    tokens = batch * seq
    attn = 12 * llm.num_layers * batch * seq * seq * llm.num_heads * head_dim(llm)
    slide = 0 if {"slide_encoder", "projector"} <= frozen else 3 * slide_fwd(model_cfg, batch, patches)
    return {"convention": 6 * llm_matmul_params(llm) * tokens + attn + slide - head_saving,
            "executed": (4 * n + 2 * n_w) * tokens + attn + slide - head_saving * (4 + 2 * (n_w == n)) // 6}


def forward_pass_flops(model_cfg, rows: int, seq: int, patches: int, logit_positions: int) -> int:
    """One forward pass (GRPO's old / reference log-probs): `rows` of `seq` tokens, the
    output head on `logit_positions` per row, the slide encoder on `patches`."""
    llm = model_cfg.llm
    head = llm.hidden_size * llm.vocab_size
    n_mm = llm_matmul_params(llm) + lora_params(llm, model_cfg.lora) - head
    attn = 4 * llm.num_layers * rows * seq * seq * llm.num_heads * head_dim(llm)
    return 2 * n_mm * rows * seq + 2 * head * rows * logit_positions + attn + slide_fwd(model_cfg, rows, patches)


def rollout_flops(model_cfg, prompts: int, group: int, prompt_len: int, patches: int, new_tokens: int) -> int:
    """Model FLOPs of sampling `group` completions of `new_tokens` for each of `prompts` prompts."""
    llm = model_cfg.llm
    n_mm = llm_matmul_params(llm) + lora_params(llm, model_cfg.lora)
    head = llm.hidden_size * llm.vocab_size
    attn_unit = 4 * llm.num_layers * llm.num_heads * head_dim(llm)
    prefill = 2 * (n_mm - head) * prompts * prompt_len + 2 * head * prompts + attn_unit * prompts * prompt_len ** 2
    rows = prompts * group
    context_sum = new_tokens * prompt_len + new_tokens * (new_tokens + 1) // 2  # Σ_i (prompt_len + i)
    decode = 2 * n_mm * rows * new_tokens + attn_unit * rows * context_sum
    return slide_fwd(model_cfg, prompts, patches) + prefill + decode
