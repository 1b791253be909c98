"""A tiny random PathVLM and a matching random batch, shared by the sharding tests."""
from __future__ import annotations

import dataclasses

import numpy as np

from pathreasoner_jax.config import LLMConfig, ModelConfig, SlideEncoderConfig

IMAGE_ID = 5


def tiny_config(lora: bool = True) -> ModelConfig:
    cfg = ModelConfig(llm=LLMConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                                    num_heads=4, num_kv_heads=2, tie_word_embeddings=False),
                      slide=dataclasses.replace(SlideEncoderConfig(), feature_dim=16, width=32, ffn_dim=64,
                                                num_heads=4, segment_lengths=[8, 16], dilations=[1, 2]),
                      compute_dtype="float32")
    cfg.lora.enabled, cfg.lora.rank, cfg.lora.alpha = lora, 4, 8.0
    return cfg


def tiny_batch(batch: int = 4, text: int = 24, patches: int = 10, seed: int = 0) -> dict:
    """Rows: [prompt tokens, P image slots, answer tokens], some patches and text padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 256, size=(batch, text)).astype(np.int32)
    ids[:, 2:2 + patches] = IMAGE_ID
    text_valid = np.ones((batch, text), bool)
    text_valid[1, -5:] = False
    patch_valid = np.ones((batch, patches), bool)
    patch_valid[0, 6:] = False
    patch_valid[2, 3:] = False
    targets = np.concatenate([ids[:, 1:], np.zeros((batch, 1), np.int32)], 1)
    weight = np.zeros((batch, text), np.float32)
    weight[:, 2 + patches:-1] = 1.0
    weight *= text_valid
    feats = rng.standard_normal((batch, patches, 16)).astype(np.float32)
    return {"ids": ids, "text_valid": text_valid, "targets": targets, "loss_weight": weight,
            "features": feats, "patch_valid": patch_valid}
