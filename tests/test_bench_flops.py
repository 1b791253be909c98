"""Benchmark FLOP counts against hand-computed numbers and a brute-force count."""
import math

import pytest

from pathreasoner_jax import flops as BF
from pathreasoner_jax.config import SFTConfig
from tiny_vlm import tiny_config

# tiny config: V 256, H 64, I 128, L 2, 4 heads / 2 KV heads of 16; LoRA r 4 on 7 linears;
# LongNet F 16 → W 32, FFN 64, 2 layers, 4 heads, branches (8,1), (16,2)
N_MM = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64 * 256  # 90112
N_LORA = 2 * 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)  # 8192
# LongNet + projector forward for 2 slides of 10 patches: dense 2·(in_proj 16·32 + 2·(4·32² + 2·32·64)
# + proj 32·64 + 64²)·20, attention per row 2 layers × (4·32·16·8 + 4·32·10·10/4)
SLIDE_FWD = 2 * (512 + 2 * (4 * 1024 + 2 * 32 * 64) + 32 * 64 + 64 * 64) * 20 + 2 * 2 * (16384 + 3200)


def test_param_counts():
    cfg = tiny_config(lora=True)
    assert BF.llm_matmul_params(cfg.llm) == N_MM == 90112
    assert BF.lora_params(cfg.llm, cfg.lora) == N_LORA == 8192
    assert BF.slide_fwd(cfg, 2, 10) == SLIDE_FWD == 999936


def test_sft_step_flops_by_hand():
    cfg = tiny_config(lora=True)
    f = BF.sft_step_flops(cfg, SFTConfig(train_lora_only=True), batch=2, seq=24, patches=10)
    attn = 12 * 2 * 2 * 24 * 24 * 4 * 16
    assert f["executed"] == (4 * (N_MM + N_LORA) + 2 * N_LORA) * 48 + attn + 3 * SLIDE_FWD
    assert f["convention"] == 6 * N_MM * 48 + attn + 3 * SLIDE_FWD
    full = BF.sft_step_flops(cfg, SFTConfig(train_lora_only=False), batch=2, seq=24, patches=10)
    assert full["executed"] == 6 * (N_MM + N_LORA) * 48 + attn + 3 * SLIDE_FWD


def test_rollout_flops_by_hand():
    cfg = tiny_config(lora=True)
    n, head = N_MM + N_LORA, 64 * 256
    attn_unit = 4 * 2 * 4 * 16
    prefill = 2 * (n - head) * 2 * 24 + 2 * head * 2 + attn_unit * 2 * 24 * 24
    decode = 2 * n * 6 * 5 + attn_unit * 6 * sum(24 + i for i in range(1, 6))
    assert BF.rollout_flops(cfg, prompts=2, group=3, prompt_len=24, patches=10, new_tokens=5) == \
        SLIDE_FWD + prefill + decode


@pytest.mark.parametrize("n", [10, 37, 256, 1000])
def test_longnet_attention_matches_a_brute_force_count(n):
    """Σ over branches, heads and segments of 4·m²·dh with m the positions a head keeps."""
    cfg = tiny_config().slide
    cfg.segment_lengths, cfg.dilations, cfg.num_heads, cfg.width = [8, 64, 512], [1, 2, 8], 4, 32
    dh, total = 8, 0
    for w, r in zip(cfg.segment_lengths, cfg.dilations):
        seg = math.ceil(min(w, n) / r) * r
        n_pad = math.ceil(n / seg) * seg
        group = math.ceil(cfg.num_heads / r)
        for h in range(cfg.num_heads):
            if h // group >= r:
                continue
            for start in range(0, n_pad, seg):
                m = len(range(start + h // group, start + seg, r))
                total += 4 * m * m * dh
    assert BF.longnet_attention_fwd(cfg, n) == cfg.num_layers * total


def test_peak_table():
    assert BF.device_peak_flops(type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()) == 989e12
    assert BF.device_peak_flops(type("D", (), {"device_kind": "cpu"})()) is None
