"""`pathreasoner vl-init` (the demo): a random Qwen2.5-VL of the vl.init_* sizes and a
byte-level BPE trained on the VL stores' texts, written as a Hugging Face folder —
config.json by transformers' `Qwen2_5_VLConfig`, safetensors by our exporter — which
every stage then imports like a downloaded checkpoint (`vl/convert.py`).
"""
from __future__ import annotations

import os
import tempfile

from flax import nnx

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.metrics_log import print0
from pathreasoner_jax.models.qwen2 import Qwen2Dims
from pathreasoner_jax.models.qwen_vision import VisionDims
from pathreasoner_jax.models.qwen_vl import QwenVL
from pathreasoner_jax.run_layout import RunLayout
from pathreasoner_jax.tokenizer import load_tokenizer, train_demo_tokenizer
from pathreasoner_jax.vl.encode import user_turns
from pathreasoner_jax.vl.records import VLStore


def mrope_sections(head_dim: int) -> tuple[int, int, int]:
    """Qwen2.5-VL's split of the head_dim/2 frequencies over (t, h, w): [16, 24, 24] of 64."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return t, h, half - t - h


def store_texts(data_dir: str):
    for stage in ("caption", "sft", "mcq"):
        d = os.path.join(data_dir, stage)
        if not os.path.isfile(os.path.join(d, "manifest.json")):
            continue
        store = VLStore(d)
        for split in store.manifest["splits"]:
            src = store.split(split)
            for i in range(len(src)):
                for t in user_turns(src[i]):
                    yield t["content"]


def vl_init(cfg, force: bool = False) -> str:
    from pathreasoner_jax.vl.convert import hf_config, save_qwen_vl
    from pathreasoner_jax.vl.runtime import add_vl_tokens
    layout, v = RunLayout(cfg), cfg.vl
    out = layout.vl_model_dir
    if v.hf_path:
        raise UserError(f"vl.hf_path is set ({v.hf_path}): vl-init makes the demo's random model only")
    if os.path.isfile(os.path.join(out, "config.json")) and not force:
        print0(f"vl-init: {out} exists; use --force to remake it")
        return out
    texts = list(store_texts(layout.vl_data_dir))
    if not texts:
        raise UserError(f"{layout.vl_data_dir}: no VL store texts to train the tokenizer on (run vl-data first)")
    with tempfile.TemporaryDirectory() as tmp:
        tok = add_vl_tokens(load_tokenizer(train_demo_tokenizer(texts, os.path.join(tmp, "tok"), v.init_vocab)))
        vocab = -(-len(tok) // 64) * 64
        head = v.init_hidden // v.init_heads
        dims = Qwen2Dims(vocab_size=vocab, hidden_size=v.init_hidden, intermediate_size=3 * v.init_hidden,
                         num_layers=v.init_layers, num_heads=v.init_heads, num_kv_heads=v.init_kv_heads, head_dim=head,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         mrope_section=mrope_sections(head))
        vdims = VisionDims(depth=v.init_vision_depth, hidden_size=v.init_vision_hidden,
                           intermediate_size=2 * v.init_vision_hidden, num_heads=v.init_vision_heads,
                           out_hidden_size=v.init_hidden, fullatt_block_indexes=(v.init_vision_depth - 1,))
        conv = tok.convert_tokens_to_ids
        image_id = conv("<|image_pad|>")
        model = QwenVL(dims, vdims, nnx.Rngs(cfg.run.seed), image_id)
        ids = {"image_token_id": image_id, "video_token_id": image_id,
               "vision_start_token_id": conv("<|vision_start|>"), "vision_end_token_id": conv("<|vision_end|>"),
               "eos_token_id": conv("<|im_end|>"), "pad_token_id": tok.pad_token_id, "bos_token_id": None,
               "max_position_embeddings": 32768}
        save_qwen_vl(model, out, hf_config(model, ids), tok)
    print0(f"vl-init: random Qwen2.5-VL (LLM {v.init_layers}×{v.init_hidden}, vision {v.init_vision_depth}×"
           f"{v.init_vision_hidden}, vocab {vocab}) → {out}")
    return out
