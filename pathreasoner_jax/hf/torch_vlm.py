"""The whole VLM in PyTorch: HF `Qwen2ForCausalLM` + LongNet + projector, and the loader of
an hf-export directory. Imports torch and transformers; nothing else in the library
imports this module (PyTorch stays optional), and it needs no JAX.

    from pathreasoner_jax.hf.torch_vlm import load_exported_vlm
    vlm, tok = load_exported_vlm("exported/")          # eval mode
    logits, valid = vlm(ids, text_valid, features, patch_valid)   # (B,T,V) fp32, (B,T)

Splicing is the same as `PathVLM.embed_inputs`: the k-th `<image>` token of a row takes
the k-th projected patch; an image token whose patch is padding is invalid (attention
mask 0); padding never takes a patch; RoPE positions are cumsum(valid) - 1, passed
explicitly as `position_ids`. Logits come out of HF in the compute dtype and are upcast.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch
from torch import nn

from pathreasoner_jax.hf.layout import SLIDE_DIR, SLIDE_FORMAT, SLIDE_FORMAT_VERSION, SLIDE_MODULES, SLIDE_WEIGHTS
from pathreasoner_jax.hf.torch_longnet import LongNet, Projector


def positions(valid_bt: torch.Tensor) -> torch.Tensor:
    return (valid_bt.long().cumsum(1) - 1).clamp(min=0)


class TorchVLM(nn.Module):
    """`llm` (an HF causal LM) + `slide_encoder` (LongNet of `slide_cfg`) + `projector`."""

    def __init__(self, llm: nn.Module, slide_cfg, image_token_id: int):
        super().__init__()
        self.llm = llm
        self.slide_encoder = LongNet(slide_cfg)
        self.projector = Projector(slide_cfg.width, llm.config.hidden_size)
        self.image_token_id = image_token_id

    def embed_inputs(self, ids, text_valid, features, patch_valid):
        """(B,T) ids/validity + (B,P,F)/(B,P) slide → (x (B,T,H), valid (B,T))."""
        x = self.llm.get_input_embeddings()(ids)
        if features is None:
            return x, text_valid
        is_image = (ids == self.image_token_id) & text_valid
        slide = self.projector(self.slide_encoder(features, patch_valid)).to(x.dtype)
        rank = (is_image.long().cumsum(1) - 1).clamp(0, slide.shape[1] - 1)
        picked = torch.gather(slide, 1, rank[..., None].expand(-1, -1, slide.shape[-1]))
        patch_ok = torch.gather(patch_valid, 1, rank)
        x = torch.where(is_image[..., None], picked, x)
        return x, text_valid & (~is_image | patch_ok)

    def forward(self, ids, text_valid, features, patch_valid):
        """Returns (fp32 logits (B,T,V), token validity (B,T))."""
        x, valid = self.embed_inputs(ids, text_valid, features, patch_valid)
        out = self.llm(inputs_embeds=x, attention_mask=valid.long(), position_ids=positions(valid), use_cache=False)
        return out.logits.float(), valid


def read_slide_config(export_dir: str) -> dict:
    """`<export_dir>/slide_encoder/config.json`, checked; ValueError/FileNotFoundError (one line)."""
    path = os.path.join(export_dir, SLIDE_DIR, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing (is {export_dir} a `pathreasoner hf-export` directory?)")
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("format") != SLIDE_FORMAT or cfg.get("format_version") != SLIDE_FORMAT_VERSION:
        raise ValueError(f"{path}: format {cfg.get('format')!r} version {cfg.get('format_version')!r}, this "
                         f"loader reads {SLIDE_FORMAT!r} version {SLIDE_FORMAT_VERSION}")
    return cfg


def load_exported_vlm(export_dir: str, device: str = "cpu", dtype=None):
    """→ (TorchVLM in eval mode, tokenizer) from an hf-export directory. `dtype` (a torch
    dtype) overrides the stored one for every module; None keeps it."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = read_slide_config(export_dir)
    tok = AutoTokenizer.from_pretrained(export_dir)
    image_id = tok.convert_tokens_to_ids(cfg["image_token"])
    if image_id != cfg["image_token_id"]:
        raise ValueError(f"{export_dir}: the tokenizer's {cfg['image_token']} is id {image_id}, "
                         f"{SLIDE_DIR}/config.json says {cfg['image_token_id']}")
    llm = AutoModelForCausalLM.from_pretrained(export_dir, dtype=dtype or "auto")
    slide_cfg = SimpleNamespace(**cfg["slide_encoder"])
    if cfg["projector"] != {"in_dim": slide_cfg.width, "out_dim": llm.config.hidden_size}:
        raise ValueError(f"{export_dir}: projector {cfg['projector']} does not fit slide width {slide_cfg.width} "
                         f"and LLM hidden size {llm.config.hidden_size}")
    vlm = TorchVLM(llm, slide_cfg, image_id)
    weights = load_file(os.path.join(export_dir, SLIDE_DIR, SLIDE_WEIGHTS))
    stray = sorted(k for k in weights if k.split(".")[0] not in SLIDE_MODULES)
    if stray:
        raise ValueError(f"{export_dir}/{SLIDE_DIR}/{SLIDE_WEIGHTS}: unexpected tensors {stray[:3]}")
    for name in SLIDE_MODULES:  # strict: a missing or extra tensor is an error, not a random weight
        part = {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")}
        getattr(vlm, name).load_state_dict(part, strict=True)
    slide_dtype = dtype or next(llm.parameters()).dtype
    for name in SLIDE_MODULES:
        getattr(vlm, name).to(dtype=slide_dtype)
    return vlm.to(device).eval(), tok
