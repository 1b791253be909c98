"""Builds a `TorchVLM` holding a `PathVLM`'s weights.

The LLM goes through the HF name mapping of `pathreasoner_jax.hf.weights` (the one
`export_llm` writes with) straight into a state dict in memory, not through an exported
directory: at 7B a disk round trip costs tens of GB, and LoRA adapters stay separate
(export merges them) so the baseline trains the same adapters as we do.
LongNet/projector transfer by name with the renaming hf-export writes them with
(`pathreasoner_jax.hf.export.torch_named_arrays`).
"""
from __future__ import annotations

import jax
import numpy as np
import torch
from flax import nnx

from benchmarks.torch_baseline.lora import apply_lora
from pathreasoner_jax.hf.export import torch_named_arrays
from pathreasoner_jax.hf.torch_vlm import TorchVLM
from pathreasoner_jax.hf.weights import hf_config_dict, hf_name_to_path, llm_param_names


def _host(x) -> np.ndarray:
    return np.array(jax.device_get(x), dtype=np.float32)  # a writable copy, torch shares it


def _leaf(state, path):
    for k in path:
        state = state[k]
    return _host(state.get_value())


def llm_state_dict(our_llm, llm_cfg) -> dict[str, torch.Tensor]:
    """HF-named fp32 tensors of the base LLM weights (LoRA adapters not merged)."""
    state = nnx.state(our_llm)
    out = {}
    for name in llm_param_names(llm_cfg):
        path, transpose = hf_name_to_path(name)
        arr = _leaf(state, path)
        out[name] = torch.from_numpy(np.ascontiguousarray(arr.T if transpose else arr))
    return out


def module_state_dict(our_module, prefix: str) -> dict[str, torch.Tensor]:
    """nnx Linear/LayerNorm leaves → fp32 torch tensors under `prefix` (kernels transposed)."""
    return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in torch_named_arrays(our_module, prefix).items()}


def lora_state_dict(our_llm, prefix: str = "llm.model.") -> dict[str, torch.Tensor]:
    """Our lora_a (in, r) / lora_b (r, out) → LoRALinear lora_A.weight (r, in) / lora_B.weight (out, r)."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(our_llm)):
        if path[-1] in ("lora_a", "lora_b"):
            mod = prefix + ".".join(str(p) for p in path[:-1])
            out[f"{mod}.lora_{path[-1][-1].upper()}.weight"] = torch.from_numpy(
                np.ascontiguousarray(_host(var.get_value()).T))
    return out


def build_hf_llm(llm_cfg, device="cpu"):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(**hf_config_dict(llm_cfg, "float32"))
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        return Qwen2ForCausalLM(cfg)


def torch_vlm_from_ours(model, model_cfg, device="cpu") -> TorchVLM:
    """A TorchVLM (fp32, train mode) with `model`'s weights; `model_cfg` resolved."""
    llm = build_hf_llm(model_cfg.llm, device)
    llm.load_state_dict(llm_state_dict(model.llm, model_cfg.llm), strict=not model_cfg.llm.tie_word_embeddings)
    if model_cfg.llm.tie_word_embeddings:
        llm.tie_weights()
    vlm = TorchVLM(llm, model_cfg.slide, model.image_token_id).to(device)
    lora = model_cfg.lora
    if lora.enabled:
        apply_lora(vlm.llm, set(lora.targets), lora.rank, lora.alpha, lora.dropout)
    sd = {**module_state_dict(model.slide_encoder, "slide_encoder."),
          **module_state_dict(model.projector, "projector."),
          **(lora_state_dict(model.llm) if lora.enabled else {})}
    missing = set(sd) - set(vlm.state_dict())
    if missing:
        raise KeyError(f"torch baseline has no parameters named {sorted(missing)[:5]}")
    vlm.load_state_dict(sd, strict=False)
    return vlm.train()
