"""hf-export's writer: a PathVLM → a self-describing directory (layout in `layout.py`).

The LLM is a standard HF Qwen2 directory (config.json with the special token ids,
safetensors, sharded with an index past `max_shard_bytes`, generation_config.json,
and the tokenizer written by its own `save_pretrained`, so the chat template and the added
tags survive). LoRA adapters are merged into a copy of the weights (the module is not
modified). The slide encoder and projector go to `slide_encoder/` in PyTorch names
(`torch_named_arrays`), which `torch_vlm.load_exported_vlm` loads strictly.

Every process takes part in gathering the tensors (`host_array`); process 0 writes. The
directory is written under `.tmp-<name>-<pid>` next to it and renamed into place, so a crash
never leaves a half export; safetensors creates its files 0600 and the staging folder is
new, so modes are set at the end to the usual 0666/0777 minus the umask (0644/0755).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from pathreasoner_jax.config import LLMConfig
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import write_json
from pathreasoner_jax.hf.layout import SLIDE_DIR, SLIDE_FORMAT, SLIDE_FORMAT_VERSION, SLIDE_WEIGHTS
from pathreasoner_jax.hf.weights import _get, hf_config_dict, hf_name_to_path, host_array, llm_param_names

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _fix_modes(root: str) -> None:
    """Dirs 0777 and files 0666 minus the umask, whatever the writers (mkdir, safetensors) chose."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for d, dirs, files in os.walk(root):
        for n in dirs:
            os.chmod(os.path.join(d, n), 0o777 & ~mask)
        for n in files:
            os.chmod(os.path.join(d, n), 0o666 & ~mask)


@contextlib.contextmanager
def staged_dir(out_dir: str):
    """Yields an empty staging folder; on success it replaces `out_dir` (an earlier export
    only: a folder without config.json is refused rather than deleted)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, "config.json")):
        raise UserError(f"{out_dir}: exists and is not an earlier export (no config.json); choose a new --out")
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    try:
        yield tmp
        _fix_modes(tmp)
        old = os.path.join(parent, f".old-{name}-{os.getpid()}")
        if os.path.lexists(out_dir):
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def llm_tensors(llm_module, llm_cfg: LLMConfig, dtype: str = "float32") -> dict[str, np.ndarray]:
    """HF name → host array (HF layout: Linear weights (out, in)), LoRA merged."""
    state = nnx.state(llm_module)
    out = {}
    for name in llm_param_names(llm_cfg):
        path, transpose = hf_name_to_path(name)
        arr = host_array(_get(state, path).get_value())
        if path[-1] == "kernel":
            lin = _get(llm_module, path[:-1])
            if getattr(lin, "lora_rank", 0) > 0:
                a, b = host_array(lin.lora_a.get_value()), host_array(lin.lora_b.get_value())
                arr = arr + lin.lora_scale * (a.astype(np.float32) @ b.astype(np.float32)).astype(arr.dtype)
        out[name] = np.ascontiguousarray((arr.T if transpose else arr).astype(NP_DTYPES[dtype]))
    return out


def torch_named_arrays(module, prefix: str, dtype: str = "float32") -> dict[str, np.ndarray]:
    """nnx Linear/LayerNorm params → PyTorch names under `prefix`: `kernel` (in, out) →
    `weight` (out, in), LayerNorm `scale` → `weight`, `bias` → `bias`."""
    rename = {"kernel": "weight", "scale": "weight", "bias": "bias"}
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        arr = host_array(var.get_value())
        name = prefix + ".".join(str(p) for p in (*path[:-1], rename[path[-1]]))
        out[name] = np.ascontiguousarray((arr.T if path[-1] == "kernel" else arr).astype(NP_DTYPES[dtype]))
    return out


def write_safetensors(tensors: dict[str, np.ndarray], d: str, max_shard_bytes: int = 4 << 30) -> None:
    """model.safetensors, or model-0000k-of-0000n.safetensors + index past `max_shard_bytes`, into `d`."""
    from safetensors.numpy import save_file

    shards, cur, size = [], {}, 0
    for name, arr in tensors.items():
        if cur and size + arr.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = arr
        size += arr.nbytes
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(d, fn), metadata={"format": "pt"})
        weight_map.update({k: fn for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_llm(tensors: dict[str, np.ndarray], llm_cfg: LLMConfig, d: str, dtype: str,
              max_shard_bytes: int = 4 << 30, extra_config: dict | None = None) -> None:
    """config.json + the safetensors (`write_safetensors`) into `d`."""
    write_safetensors(tensors, d, max_shard_bytes)
    write_json(os.path.join(d, "config.json"), {**hf_config_dict(llm_cfg, dtype), **(extra_config or {})})


def export_llm(llm_module, llm_cfg: LLMConfig, out_dir: str, dtype: str = "float32",
               max_shard_bytes: int = 4 << 30) -> None:
    """The LLM alone (config.json + safetensors), LoRA merged; no tokenizer."""
    tensors = llm_tensors(llm_module, llm_cfg, dtype)
    if jax.process_index() != 0:
        return
    with staged_dir(out_dir) as tmp:
        write_llm(tensors, llm_cfg, tmp, dtype, max_shard_bytes)


def token_ids(tokenizer, ids) -> dict:
    """bos/eos/pad for config.json and generation_config.json. Generation stops at
    `<|im_end|>` (our EOS) and, as Qwen's own config does, at `<|endoftext|>`; Qwen has no
    BOS token, so bos_token_id is `<|endoftext|>` as in Qwen's config."""
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    endoftext = endoftext if isinstance(endoftext, int) and endoftext != tokenizer.unk_token_id else None
    eos = [ids.eos] + ([endoftext] if endoftext is not None and endoftext != ids.eos else [])
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (endoftext or ids.pad)
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": ids.pad}


def export_vlm(model, model_cfg, tokenizer, ids, out_dir: str, dtype: str = "float32",
               max_shard_bytes: int = 4 << 30) -> None:
    """The whole PathVLM → `out_dir` (layout in `layout.py`). `model_cfg` resolved, `ids`
    the tokenizer's SpecialIds."""
    from transformers import GenerationConfig

    tensors = llm_tensors(model.llm, model_cfg.llm, dtype)
    slide = {**torch_named_arrays(model.slide_encoder, "slide_encoder.", dtype),
             **torch_named_arrays(model.projector, "projector.", dtype)}
    if jax.process_index() != 0:
        return
    from safetensors.numpy import save_file

    tid = token_ids(tokenizer, ids)
    with staged_dir(out_dir) as tmp:
        # config.json holds a single eos id (what transformers' Qwen2Config documents)
        write_llm(tensors, model_cfg.llm, tmp, dtype, max_shard_bytes, {**tid, "eos_token_id": ids.eos})
        GenerationConfig(**tid).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        sdir = os.path.join(tmp, SLIDE_DIR)
        os.mkdir(sdir)
        save_file(slide, os.path.join(sdir, SLIDE_WEIGHTS), metadata={"format": "pt"})
        write_json(os.path.join(sdir, "config.json"), {
            "format": SLIDE_FORMAT, "format_version": SLIDE_FORMAT_VERSION, "dtype": dtype,
            "slide_encoder": dataclasses.asdict(model_cfg.slide),
            "projector": {"in_dim": model_cfg.slide.width, "out_dim": model_cfg.llm.hidden_size},
            "image_token": model_cfg.image_token, "image_token_id": int(ids.image)})
