"""Tiny random Qwen2 checkpoints made with transformers (CPU torch), saved with save_pretrained."""
from __future__ import annotations

import dataclasses

import numpy as np

VOCAB = 300


def make_hf_qwen2(out_dir: str, tied: bool, seed: int = 0, layers: int = 2, rope_theta: float = 10000.0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=rope_theta, tie_word_embeddings=tied, rms_norm_eps=1e-6)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases and norm scales so that those code paths are exercised
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model


def tiny_model_config(hf_dir: str, lora: bool = False):
    from pathreasoner_jax.config import LLMConfig, ModelConfig
    from pathreasoner_jax.models.factory import resolve_model_config

    cfg = ModelConfig(llm=LLMConfig(hf_path=hf_dir), compute_dtype="float32")
    cfg.lora.enabled = lora
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0
    cfg.slide = dataclasses.replace(cfg.slide, feature_dim=16, width=32, ffn_dim=64, num_heads=4,
                                    segment_lengths=[8, 16], dilations=[1, 2])
    return resolve_model_config(cfg)


def padded_prompts(rng: np.random.Generator, left: bool):
    """Two prompts of lengths 12 and 7 padded to 12, left or right."""
    ids = rng.integers(5, VOCAB - 5, size=(2, 12))
    att = np.ones((2, 12), np.int64)
    if left:
        att[1, :5] = 0
    else:
        att[1, 7:] = 0
    ids[att == 0] = 0
    return ids, att


TINY_TEMPLATE_MARK = "{# tiny-qwen #}"


def make_tiny_tokenizer(out_dir: str, vocab_size: int = 280) -> None:
    """A Qwen-like byte-level BPE with the chat tokens only (no `<image>` or format tags, as a
    downloaded Qwen tokenizer), its own chat template, saved next to a `make_hf_qwen2` model
    (280 + the 7 tags that `load_tokenizer` adds fit its 300 embeddings)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pathreasoner_jax.tokenizer import CHAT_TOKENS, QWEN_CHAT_TEMPLATE

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["the tumour shows glands, nuclei and mitoses in the stroma"] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_CHAT_TEMPLATE + TINY_TEMPLATE_MARK
    fast.save_pretrained(out_dir)


def perturb_params(module, seed: int, scale: float) -> None:
    """Random offsets on every nnx.Param of `module` (incl. zero-initialised biases, LN and
    LoRA B), so that a transfer or export that swaps or drops a tensor shows up in outputs."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(module, nnx.Param)
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(state):
        v = np.asarray(var.get_value())
        var.set_value(jnp.asarray(v + scale * rng.standard_normal(v.shape).astype(v.dtype)))
    nnx.update(module, state)
