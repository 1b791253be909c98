"""Hugging Face weights: local Qwen2 directories (config.json + safetensors, single or sharded
with an index) in; the HF name mapping and `host_array`, which `export` writes with.

Import streams each tensor straight into its target sharding: `make_array_from_callback`
asks for one device's slice at a time, and the slice is read from a memory map of the
safetensors file, so no full unsharded copy of a tensor is built on the host. (The
safetensors numpy backend cannot slice bf16 tensors, so the reader maps the documented
safetensors layout itself: 8-byte header length, JSON header, raw little-endian data.)
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterator

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from pathreasoner_jax.config import LLMConfig

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    """Memory-mapped read access to one .safetensors file."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            try:
                self.header = json.loads(f.read(n))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a safetensors file ({e})") from None
        self.header.pop("__metadata__", None)
        self.data_start = 8 + n
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")

    def keys(self):
        return self.header.keys()

    def tensor(self, name: str) -> np.ndarray:
        """A lazy (memory-mapped) view; slicing it reads only the touched bytes."""
        info = self.header[name]
        start, end = info["data_offsets"]
        raw = self._mm[self.data_start + start: self.data_start + end]
        return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def open_checkpoint_files(hf_dir: str) -> dict[str, SafetensorsFile]:
    """tensor name → the file holding it (model.safetensors or an index of shards)."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = {fn: SafetensorsFile(os.path.join(hf_dir, fn)) for fn in sorted(set(weight_map.values()))}
        return {name: files[fn] for name, fn in weight_map.items()}
    if os.path.exists(single):
        f = SafetensorsFile(single)
        return {name: f for name in f.keys()}
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")


HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "rms_norm_eps")


def llm_config_from_hf(hf_dir: str) -> LLMConfig:
    """The LLM sizes of `hf_dir/config.json`; FileNotFoundError / ValueError (one line) when unusable."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing (is {hf_dir} a Hugging Face model directory?)")
    try:
        with open(path) as f:
            c = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({' '.join(str(e).split())})") from None
    if not isinstance(c, dict) or c.get("model_type") not in ("qwen2", "qwen2_5"):
        kind = c.get("model_type") if isinstance(c, dict) else None
        raise ValueError(f"{path}: model_type {kind!r} is not qwen2")
    missing = [k for k in HF_REQUIRED if k not in c]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    rope = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return LLMConfig(
        hf_path=hf_dir, vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"], num_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
        head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"], rope_theta=float(rope),
        rms_norm_eps=c["rms_norm_eps"], tie_word_embeddings=c.get("tie_word_embeddings", False),
        max_position_embeddings=c.get("max_position_embeddings", 32768))


def hf_config_dict(llm: LLMConfig, dtype: str = "float32") -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_layers, "num_attention_heads": llm.num_heads,
        "num_key_value_heads": llm.num_kv_heads, "head_dim": llm.head_dim or llm.hidden_size // llm.num_heads,
        "rope_theta": llm.rope_theta, "rms_norm_eps": llm.rms_norm_eps, "hidden_act": "silu",
        "tie_word_embeddings": llm.tie_word_embeddings, "max_position_embeddings": llm.max_position_embeddings,
        "attention_dropout": 0.0, "use_sliding_window": False, "torch_dtype": dtype,
    }


_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def hf_name_to_path(name: str) -> tuple[tuple, bool] | None:
    """HF tensor name → (our nnx state path under `llm`, transpose?); None if not ours."""
    if name == "model.embed_tokens.weight":
        return ("embed_tokens",), False
    if name == "model.norm.weight":
        return ("norm", "weight"), False
    if name == "lm_head.weight":
        return ("lm_head",), True
    m = _LAYER.match(name)
    if not m:
        return None
    i, mod, kind = int(m.group(1)), m.group(2).split("."), m.group(3)
    if mod[-1].endswith("layernorm"):
        return ("layers", i, mod[-1], "weight"), False
    return ("layers", i, *mod, "kernel" if kind == "weight" else "bias"), kind == "weight"


def llm_param_names(llm: LLMConfig) -> Iterator[str]:
    yield "model.embed_tokens.weight"
    for i in range(llm.num_layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight"
        yield f"{p}.post_attention_layernorm.weight"
        for n in ("q", "k", "v"):
            yield f"{p}.self_attn.{n}_proj.weight"
            yield f"{p}.self_attn.{n}_proj.bias"
        yield f"{p}.self_attn.o_proj.weight"
        for n in ("gate", "up", "down"):
            yield f"{p}.mlp.{n}_proj.weight"
    yield "model.norm.weight"
    if not llm.tie_word_embeddings:
        yield "lm_head.weight"


def _get(tree, path):
    """Walks a path through an nnx State (by key) or a module tree (by attribute/index)."""
    for k in path:
        tree = tree[k] if isinstance(k, int) or not isinstance(tree, nnx.Module) else getattr(tree, k)
    return tree


def load_llm_arrays(hf_dir: str, llm: LLMConfig, abstract_llm_state, shardings_llm) -> dict[tuple, jax.Array]:
    """Reads every LLM tensor straight into its sharding. Returns {our path: array}."""
    files = open_checkpoint_files(hf_dir)
    out = {}
    for name in llm_param_names(llm):
        if name not in files:
            raise ValueError(f"{hf_dir}: tensor {name} missing from the checkpoint")
        path, transpose = hf_name_to_path(name)
        var = _get(abstract_llm_state, path)
        sharding = _get(shardings_llm, path)
        sharding = sharding.get_value() if isinstance(sharding, nnx.Variable) else sharding
        shape, dtype = var.shape, var.dtype
        src = files[name].tensor(name)
        expect = tuple(shape[::-1]) if transpose else tuple(shape)
        if tuple(src.shape) != expect:
            raise ValueError(f"{files[name].path}: {name} has shape {tuple(src.shape)}, the config expects {expect}")

        def read(idx, src=src, transpose=transpose, dtype=dtype):
            part = src[idx[::-1]].T if transpose else src[idx]
            return np.asarray(part, dtype=dtype)
        out[path] = jax.make_array_from_callback(tuple(shape), sharding, read)
    return out


def host_array(x: jax.Array) -> np.ndarray:
    """The whole array on this host (gathered across processes when it is not addressable)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
