"""FLOP counts for MFU, and peak FLOP/s of known accelerators.

Training FLOPs per token = 6·N + 12·L·T·(heads·head_dim): N the LLM's matmul parameters
(attention and MLP projections of every layer, plus the output head; embeddings are a
lookup), the factor 6 for forward (2) + backward (4); the second term is attention
scores and values (2·2·T·d per layer forward, ×3 with backward) at sequence length T
(PaLM appendix B). The LongNet slide encoder adds < 1% at the paper's sizes and is left out.
"""
from __future__ import annotations

import jax

# dense bf16 peak per chip (vendor datasheets)
PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12, "tpu v5 lite": 197e12,
             "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v4": 275e12, "tpu v6": 918e12}


def llm_matmul_params(llm) -> int:
    hd = llm.head_dim or llm.hidden_size // llm.num_heads
    d = llm.hidden_size
    per_layer = 2 * d * llm.num_heads * hd + 2 * d * llm.num_kv_heads * hd + 3 * d * llm.intermediate_size
    return llm.num_layers * per_layer + d * llm.vocab_size


def train_flops_per_token(model_cfg, seq_len: int) -> float:
    llm = model_cfg.llm
    hd = llm.head_dim or llm.hidden_size // llm.num_heads
    return 6.0 * llm_matmul_params(llm) + 12.0 * llm.num_layers * seq_len * llm.num_heads * hd


def forward_flops_per_token(model_cfg, context_len: int) -> float:
    llm = model_cfg.llm
    hd = llm.head_dim or llm.hidden_size // llm.num_heads
    return 2.0 * llm_matmul_params(llm) + 4.0 * llm.num_layers * context_len * llm.num_heads * hd


def device_peak_flops(device=None) -> float | None:
    """Peak bf16 FLOP/s of one device, None when unknown (CPU)."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for key, val in PEAK_BF16.items():
        if key in kind:
            return val
    return None
