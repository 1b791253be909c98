"""Qwen2.5-VL weights with a local Hugging Face directory (`Qwen2_5_VLForConditionalGeneration`):
config.json (nested `text_config` / `vision_config` as transformers ≥ 4.52 writes it, or the
flat layout of the released checkpoints) and safetensors, single or sharded.

Import reads each tensor straight into its sharding (`hf/weights.py`: memory-mapped slices,
no unsharded host copy of a large tensor). Tensor names: `visual.*`, `model.layers.*`,
`lm_head.weight` as saved checkpoints have them; transformers' in-memory names
(`model.visual.*`, `model.language_model.*`) are accepted too. Export writes the saved
layout, LoRA merged, through a staging folder renamed into place.

The renames below are the whole conversion, so they are written out by hand: Linear
weights are transposed to our (in, out) kernels, the patch Conv3d (E, C, 2, 14, 14) is a
(C·2·14·14, E) matmul kernel, the merger's `mlp.0` / `mlp.2` are `fc1` / `fc2`.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.config import LLMConfig
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.hf.export import NP_DTYPES, llm_tensors, staged_dir, write_safetensors
from pathreasoner_jax.hf.weights import _get, hf_name_to_path, host_array, llm_param_names, open_checkpoint_files
from pathreasoner_jax.models.qwen2 import Qwen2Dims
from pathreasoner_jax.models.qwen_vision import VisionDims
from pathreasoner_jax.models.qwen_vl import QwenVL, vision_dims_from_hf

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_BLOCK = re.compile(r"visual\.blocks\.(\d+)\.(.+)\.(weight|bias)$")


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing (is {hf_dir} a Hugging Face Qwen2.5-VL directory?)")
    try:
        with open(path) as f:
            c = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({' '.join(str(e).split())})") from None
    if not isinstance(c, dict) or c.get("model_type") != "qwen2_5_vl" or "vision_config" not in c:
        raise UserError(f"{path}: model_type {c.get('model_type') if isinstance(c, dict) else None!r} "
                        f"is not qwen2_5_vl (with a vision_config)")
    return c


def text_config(c: dict) -> dict:
    """The decoder's fields: `text_config`, else the top level (released checkpoints)."""
    return {**c, **c.get("text_config", {})}


def mrope_section(c: dict) -> tuple[int, ...]:
    t = text_config(c)
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    sec = tuple(int(s) for s in rope.get("mrope_section", ()))
    if not sec:
        raise UserError("config.json: no mrope_section in rope_parameters / rope_scaling")
    return sec


def llm_config(c: dict, hf_dir: str = "") -> LLMConfig:
    t = text_config(c)
    rope = t.get("rope_theta") or (t.get("rope_parameters") or {}).get("rope_theta", 1_000_000.0)
    return LLMConfig(hf_path=hf_dir, vocab_size=t["vocab_size"], hidden_size=t["hidden_size"],
                     intermediate_size=t["intermediate_size"], num_layers=t["num_hidden_layers"],
                     num_heads=t["num_attention_heads"],
                     num_kv_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
                     head_dim=t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
                     rope_theta=float(rope), rms_norm_eps=t["rms_norm_eps"],
                     tie_word_embeddings=bool(c.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
                     max_position_embeddings=t.get("max_position_embeddings", 128000))


def model_dims(c: dict, lora=None, attention_impl: str = "auto", remat: bool = False,
               attention_block: int = 0) -> tuple[Qwen2Dims, VisionDims]:
    sec = mrope_section(c)
    llm = llm_config(c)
    dims = Qwen2Dims.from_config(llm, lora, attention_impl, remat, attention_block)
    if 2 * sum(sec) != dims.head_dim:
        raise UserError(f"config.json: mrope_section {list(sec)} sums to {sum(sec)}, not head_dim/2 = {dims.head_dim // 2}")
    from dataclasses import replace
    return replace(dims, mrope_section=sec), vision_dims_from_hf(c, remat)


def vision_param_names(v: VisionDims):
    """(HF name, our path under `visual`, how: "T" transpose | "conv" | "copy")."""
    yield "visual.patch_embed.proj.weight", ("patch_embed", "kernel"), "conv"
    for i in range(v.depth):
        p = f"visual.blocks.{i}"
        for n in ("norm1", "norm2"):
            yield f"{p}.{n}.weight", ("blocks", i, n, "weight"), "copy"
        for mod in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            path = ("blocks", i, *mod.split("."))
            yield f"{p}.{mod}.weight", (*path, "kernel"), "T"
            yield f"{p}.{mod}.bias", (*path, "bias"), "copy"
    yield "visual.merger.ln_q.weight", ("merger", "ln_q", "weight"), "copy"
    for hf, ours in (("mlp.0", "fc1"), ("mlp.2", "fc2")):
        yield f"visual.merger.{hf}.weight", ("merger", ours, "kernel"), "T"
        yield f"visual.merger.{hf}.bias", ("merger", ours, "bias"), "copy"


def _saved_name(name: str) -> str:
    """transformers' in-memory names → the saved checkpoint's."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def checkpoint_names(dims: Qwen2Dims, v: VisionDims, llm: LLMConfig):
    """Every tensor of the model: (HF name, our path, how)."""
    yield from ((n, ("visual", *p), how) for n, p, how in vision_param_names(v))
    for name in llm_param_names(llm):
        path, transpose = hf_name_to_path(name)
        yield name, ("llm", *path), "T" if transpose else "copy"


def load_qwen_vl(hf_dir: str, mesh=None, lora=None, param_dtype: str = "float32", compute_dtype: str = "float32",
                 remat: bool = False, logits_chunk: int = 0, attention_impl: str = "auto", seed: int = 0,
                 attention_block: int = 0) -> QwenVL:
    """A QwenVL with the directory's weights, built in its shardings (LoRA adapters, if any, initialised)."""
    from pathreasoner_jax.models.factory import create_sharded
    c = read_config(hf_dir)
    dims, vdims = model_dims(c, lora, attention_impl, remat, attention_block)
    llm = llm_config(c, hf_dir)
    files = {_saved_name(k): (f, k) for k, f in open_checkpoint_files(hf_dir).items()}  # → (file, its name)
    pd = DTYPES[param_dtype]

    def make():
        return QwenVL(dims, vdims, nnx.Rngs(seed), int(c["image_token_id"]), pd, DTYPES[compute_dtype], logits_chunk)

    def loader(abs_state, shardings):
        out = {}
        for name, path, how in checkpoint_names(dims, vdims, llm):
            if name not in files:
                raise UserError(f"{hf_dir}: tensor {name} missing from the checkpoint")
            var, sh = _get(abs_state, path), _get(shardings, path)
            sh = sh.get_value() if isinstance(sh, nnx.Variable) else sh
            file, stored = files[name]
            src = file.tensor(stored)
            expect = {"T": tuple(var.shape[::-1]), "copy": tuple(var.shape)}.get(how)
            if how == "conv":
                src = np.asarray(src).reshape(src.shape[0], -1).T
                expect = tuple(var.shape)
            if tuple(src.shape) != expect:
                raise UserError(f"{file.path}: {stored} has shape {tuple(src.shape)}, the config expects {expect}")

            def read(idx, src=src, how=how, dtype=var.dtype):
                return np.asarray(src[idx[::-1]].T if how == "T" else src[idx], dtype=dtype)
            out[path] = jax.make_array_from_callback(tuple(var.shape), sh, read)
        return out
    return create_sharded(make, mesh, loader)


def vision_tensors(visual, v: VisionDims, dtype: str = "float32") -> dict[str, np.ndarray]:
    state = nnx.state(visual)
    out = {}
    for name, path, how in vision_param_names(v):
        arr = host_array(_get(state, path).get_value())
        if how == "T":
            arr = arr.T
        elif how == "conv":
            arr = arr.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
        out[name] = np.ascontiguousarray(arr.astype(NP_DTYPES[dtype]))
    return out


def hf_config(model: QwenVL, ids: dict, dtype: str = "float32") -> dict:
    """config.json by transformers' own Qwen2_5_VLConfig. ids: image/video/vision_start/
    vision_end token ids (+ bos/eos/pad)."""
    from transformers import Qwen2_5_VLConfig
    d, v = model.dims, model.vdims
    text = dict(vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
                num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads, num_key_value_heads=d.num_kv_heads,
                rms_norm_eps=d.rms_norm_eps, max_position_embeddings=ids.get("max_position_embeddings", 128000),
                rope_parameters={"rope_type": "default", "rope_theta": d.rope_theta,
                                 "mrope_section": list(d.mrope_section)})
    vision = dict(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                  num_heads=v.num_heads, out_hidden_size=v.out_hidden_size,
                  fullatt_block_indexes=list(v.fullatt_block_indexes), window_size=v.window_size,
                  patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size,
                  temporal_patch_size=v.temporal_patch_size, in_channels=v.in_channels)
    tokens = {k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                                  "bos_token_id", "eos_token_id", "pad_token_id") if k in ids}
    text.update({k: v for k, v in tokens.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=d.tie_word_embeddings,
                           **tokens)
    cfg.dtype = dtype
    return cfg.to_dict()


def save_qwen_vl(model: QwenVL, out_dir: str, config: dict, tokenizer=None, dtype: str = "float32",
                 max_shard_bytes: int = 4 << 30) -> None:
    """`out_dir` ← config.json (`config`, e.g. the imported one or `hf_config`) + safetensors
    (+ the tokenizer and its processor files when given)."""
    d = model.dims
    llm = LLMConfig(vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
                    num_layers=d.num_layers, num_heads=d.num_heads, num_kv_heads=d.num_kv_heads, head_dim=d.head_dim,
                    rope_theta=d.rope_theta, rms_norm_eps=d.rms_norm_eps, tie_word_embeddings=d.tie_word_embeddings)
    tensors = {**vision_tensors(model.visual, model.vdims, dtype), **llm_tensors(model.llm, llm, dtype)}
    if jax.process_index() != 0:
        return
    from pathreasoner_jax.core.io import write_json
    with staged_dir(out_dir) as tmp:
        write_safetensors(tensors, tmp, max_shard_bytes)
        write_json(os.path.join(tmp, "config.json"), config)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
