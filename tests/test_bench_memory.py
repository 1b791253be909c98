"""Memory estimate against hand-computed numbers, and the fit check on the real presets."""
import os

import numpy as np
import pytest
from flax import nnx

from pathreasoner_jax.config import Config, load_config
from pathreasoner_jax.memory import (GiB, MemoryFitError, check_fits, estimate, llm_param_count,
                                     projector_param_count, slide_param_count)
from tiny_vlm import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg():
    cfg = Config()
    cfg.model = tiny_config(lora=True)  # V 256, H 64, I 128, L 2, 4 heads / 2 kv of 16; LongNet 16→32, FFN 64
    return cfg


def test_param_counts_by_hand():
    m = _cfg().model
    # embed 256·64 + 2·(q 64·64+64, k/v 64·32+32 each, o 64·64, MLP 3·64·128, 2 norms of 64) + norm 64 + head 256·64
    assert llm_param_count(m.llm) == 16384 + 2 * (4160 + 2 * 2080 + 4096 + 24576 + 128) + 64 + 16384 == 107072
    # in_proj 16·32+32 + 2·(q/k/v/out 4·(32·32+32), 3 LNs of 32, fc1 32·64+64, inner LN of 64, fc2 64·32+32) + final LN
    assert slide_param_count(m.slide) == 544 + 2 * (4224 + 192 + 2112 + 128 + 2080) + 64 == 18080
    assert projector_param_count(32, 64) == 32 * 64 + 64 + 64 * 64 + 64 == 6272


def test_param_bytes_match_a_built_model():
    """The estimate's parameter bytes on one device equal the bytes of an actual PathVLM."""
    from pathreasoner_jax.models.vlm import PathVLM
    cfg = _cfg()
    model = nnx.eval_shape(lambda: PathVLM(cfg.model, nnx.Rngs(0), 5))
    real = sum(np.prod(v.shape) * 4 for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert estimate(cfg, (1, 1, 1))["params"] == real == 4 * (107072 + 8192 + 18080 + 6272)


MIB = 1 << 20
# per layer 4·b·P·(6W+3F) + branch (8,1): n_pad 16, seg 8; branch (16,2): seg 10, n_pad 10 (probabilities, fp32)
LONGNET = 2 * (4 * 2 * 10 * (6 * 32 + 3 * 64) + 4 * 2 * 4 * 16 * 8 + 4 * 2 * 4 * 10 * 10 / 4)


def test_estimate_one_device_by_hand():
    cfg = _cfg()
    est = estimate(cfg, (1, 1, 1), seq_len=24, batch=2, patches=10)
    trainable = 8192 + 18080 + 6272  # LoRA r 4 on 7 linears of 2 layers, LongNet, projector
    assert est["grads"] == 4 * trainable and est["optimizer"] == 8 * trainable
    # a layer: norms, q/k/v, attention output, MLP (fp32) + scores: fp32 probabilities, their gradient, a copy
    layer = 4 * 2 * 24 * (4 * 64 + 2 * 4 * 16 + 2 * 2 * 16 + 3 * 128) + (4 + 2 * 4) * 2 * 4 * 24 * 24
    loss = 2 * 4 * 2 * 24 * 256  # fp32 logits and their gradient (24 tokens < logits_chunk)
    assert est["activations"] == 2 * layer + loss + LONGNET == 599616
    # one device gathers nothing; the program: 256 MiB
    assert est["gathered"] == 0 and est["program"] == 256 * MIB
    assert est["train_total"] == est["params"] + 12 * trainable + est["activations"] + est["program"]
    # grpo defaults: 4 prompts of 24 tokens shared, 4·8 completions of 256 tokens; 2 layers × k,v × 2 heads × 16 × 4 B
    assert est["kv_cache"] == 2 * 2 * (4 * 24 + 4 * 8 * 256) * 2 * 16 * 4
    # the GRPO update: 4·8 rows of 24 + 256 tokens, logits at the 256 completion positions
    t = 24 + 256
    g_layer = 4 * 32 * t * (4 * 64 + 2 * 4 * 16 + 2 * 2 * 16 + 3 * 128) + (4 + 2 * 4) * 32 * 4 * t * t
    g_loss = 2 * 4 * 32 * 256 * 256
    assert est["grpo_activations"] == pytest.approx(2 * g_layer + g_loss + 32 / 2 * LONGNET, rel=1e-12)
    assert est["peak"] == max(est["train_total"], est["grpo_total"], est["rollout_total"])


def test_estimate_sharded_by_hand():
    cfg = _cfg()
    est = estimate(cfg, {"data": 1, "fsdp": 4, "tensor": 2}, seq_len=24, batch=8, patches=10)
    small = 2 * (2 * 64 + 8 * 16) + 64  # norms and q/k/v biases stay whole
    per_device = (107072 - small) / 8 + small + 8192 / 2 + 18080 + (32 * 64 / 4 + 64 * 64 / 8 + 128)
    assert est["params"] == 4 * per_device
    layer = 4 * 2 * 24 * (4 * 64 + (2 * 4 * 16 + 2 * 2 * 16 + 3 * 128) / 2) + (4 + 2 * 4) * 2 * 4 * 24 * 24 / 2
    assert est["activations"] == 2 * layer + 2 * 4 * 2 * 24 * 256 / 2 + LONGNET
    # FSDP gathers two layers' matrices (q, k, v, o: 64·16·(4+2+2+4); MLP 3·64·128) and the
    # LM head whole (not the embedding: a lookup reads its own shard), split over tensor
    assert est["gathered"] == 4 * (2 * (64 * 16 * 12 + 3 * 64 * 128) + 256 * 64) / 2


def test_remat_keeps_each_layers_residual_then_the_larger_of_a_layer_and_the_loss():
    cfg = _cfg()
    cfg.model.remat = True
    est = estimate(cfg, (1, 1, 1), seq_len=24, batch=2, patches=10)
    one_layer = 4 * 2 * 24 * (4 * 64 + 2 * 4 * 16 + 2 * 2 * 16 + 3 * 128) + (4 + 2 * 4) * 2 * 4 * 24 * 24
    loss = 2 * 4 * 2 * 24 * 256
    assert one_layer > loss
    kept = 2 * 4 * 2 * 24 * (64 + 2.5 * 128)  # per layer its input and (as XLA does) ~2.5 MLP-wide tensors
    assert est["activations"] == kept + one_layer + LONGNET
    # a long sequence under a small logits chunk: the chunk's logits, not the layer, set the peak
    cfg.model.logits_chunk = 16
    est = estimate(cfg, (1, 1, 1), seq_len=24, batch=2, patches=10)
    assert est["activations"] == kept + max(one_layer, 2 * 4 * 2 * 16 * 256) + LONGNET


def test_check_fits_raises_with_advice():
    est = estimate(_cfg(), (1, 1, 1), device_bytes=1 << 20, seq_len=24, batch=2, patches=10)
    assert est["fits"] is False
    with pytest.raises(MemoryFitError, match=r"mesh\.fsdp.*model\.remat"):
        check_fits(est)
    check_fits(estimate(_cfg(), (1, 1, 1), device_bytes=1 << 30, seq_len=24, batch=2, patches=10))
    check_fits(estimate(_cfg(), (1, 1, 1), device_bytes=None))  # unknown memory (CPU): no check


def test_7b_preset_needs_fsdp_on_h100s():
    """Qwen2.5-7B, batch 8 × (4096 slide + 512 text): 30 GB of fp32 weights and the
    activations of 8 rows cannot fit one 80 GB H100; FSDP over 8 fits the SFT step, and
    the GRPO update (4 prompts × G 8 = 4 rows of 5120 tokens per device) fits once it
    takes one row at a time (grpo.micro_batches=4)."""
    cfg = load_config(os.path.join(ROOT, "configs", "qwen2_5_7b.yaml"))
    h100 = 80 * 10 ** 9
    with pytest.raises(MemoryFitError):
        check_fits(estimate(cfg, (1, 1, 1), h100))
    mesh8 = load_config(os.path.join(ROOT, "configs", "mesh", "h100_8.yaml")).mesh
    shape = {"data": mesh8.data, "fsdp": mesh8.fsdp, "tensor": mesh8.tensor}
    est = estimate(cfg, shape, h100)
    assert 10 * GiB < est["train_total"] < 0.9 * h100 < est["grpo_total"]
    with pytest.raises(MemoryFitError, match="grpo.micro_batches"):
        check_fits(est)
    cfg.grpo.micro_batches = 4
    est = estimate(cfg, shape, h100)
    check_fits(est)
    assert est["grpo_total"] < 0.9 * h100


@pytest.mark.parametrize("name,devices", [("h100_1", 1), ("h100_8", 8), ("tpu_v5e_8", 8), ("tpu_v5e_64", 64),
                                          ("tpu_v5p_128", 64)])
def test_mesh_presets(name, devices):
    """Each preset is only a mesh section whose axes multiply to the slice's device count
    (v5p-128 names TensorCores: 64 chips, one JAX device each)."""
    path = os.path.join(ROOT, "configs", "mesh", f"{name}.yaml")
    import yaml
    with open(path) as f:
        assert set(yaml.safe_load(f)) == {"mesh"}
    m = load_config(path).mesh
    assert m.data * m.fsdp * m.tensor == devices
