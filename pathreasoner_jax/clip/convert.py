"""CLIP weights in and out: a local HF `CLIPModel` folder (config.json + safetensors) and
open_clip checkpoints, without executing pickled code.

HF: `load_hf(dir)` → (model, config); `save_hf(model, dir, tokenizer)` writes config.json
(transformers' own `CLIPConfig`), model.safetensors and the tokenizer into a temporary
folder, then renames it over `dir`, so a failed export never leaves half a folder.
open_clip: `load_openclip(path, config)` reads `.safetensors`, or a `.pt`/`.bin` through
`torch.load(weights_only=True)` (tensors and plain containers only); open_clip stores no
architecture in the file, so the sizes come from the config's preset and every shape is
checked against it. `openclip_state(model)` is the inverse (the PyTorch baseline loads it).

HF linear weights are (out, in), ours (in, out); the patch conv (W, 3, p, p) is our
(p·p·3, W) kernel in (ph, pw, c) order; open_clip fuses q/k/v into `in_proj_*` and keeps
`proj` / `text_projection` as (in, out) matrices.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import replace

import numpy as np
from flax import nnx

from pathreasoner_jax.clip.model import ClipModelConfig, TowerConfig, build_clip
from pathreasoner_jax.core.errors import UserError

_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _conv_in(w):  # (W, 3, p, p) → (p·p·3, W)
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _conv_out(k, p):  # (p·p·3, W) → (W, 3, p, p)
    return k.reshape(p, p, 3, -1).transpose(3, 2, 0, 1)


def _hf_keys(c: ClipModelConfig):
    """(hf key, our path, kind) for every tensor; kind: id | t (transpose) | conv."""
    out = [("logit_scale", ("logit_scale",), "id"),
           ("visual_projection.weight", ("visual_projection", "kernel"), "t"),
           ("text_projection.weight", ("text_projection", "kernel"), "t")]
    v, t = "vision_model", "text_model"
    out += [(f"{v}.embeddings.patch_embedding.weight", (v, "patch_embedding"), "conv"),
            (f"{v}.embeddings.class_embedding", (v, "class_embedding"), "id"),
            (f"{v}.embeddings.position_embedding.weight", (v, "position_embedding"), "id"),
            (f"{t}.embeddings.token_embedding.weight", (t, "token_embedding"), "id"),
            (f"{t}.embeddings.position_embedding.weight", (t, "position_embedding"), "id")]
    for tower, norms in ((v, ("pre_layrnorm", "post_layernorm")), (t, ("final_layer_norm",))):
        for n in norms:
            out += [(f"{tower}.{n}.weight", (tower, n, "scale"), "id"), (f"{tower}.{n}.bias", (tower, n, "bias"), "id")]
        layers = (c.vision if tower == v else c.text).layers
        for i in range(layers):
            hf, ours = f"{tower}.encoder.layers.{i}.", (tower, "layers", i)
            for name, sub in [(f"self_attn.{p}", p) for p in _LINEARS] + [("mlp.fc1", "fc1"), ("mlp.fc2", "fc2")]:
                out += [(f"{hf}{name}.weight", ours + (sub, "kernel"), "t"), (f"{hf}{name}.bias", ours + (sub, "bias"), "id")]
            for n in ("layer_norm1", "layer_norm2"):
                out += [(f"{hf}{n}.weight", ours + (n, "scale"), "id"), (f"{hf}{n}.bias", ours + (n, "bias"), "id")]
    return out


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def _set_all(model, values: dict) -> None:
    """values: our path → numpy array; shapes must match the model's."""
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    for path, arr in values.items():
        parent = _get(pure, path[:-1])
        old = parent[path[-1]]
        if tuple(old.shape) != tuple(arr.shape):
            raise UserError(f"{'.'.join(map(str, path))}: shape {tuple(arr.shape)} in the weights, "
                            f"{tuple(old.shape)} in the configured model")
        parent[path[-1]] = np.asarray(arr, dtype=old.dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def config_from_hf(d: dict) -> ClipModelConfig:
    """A CLIPModel config.json dict → our config (HF defaults where a key is absent)."""
    tc, vc = d.get("text_config") or {}, d.get("vision_config") or {}
    acts = {tc.get("hidden_act", "quick_gelu"), vc.get("hidden_act", "quick_gelu")}
    if len(acts) > 1 or not acts <= {"gelu", "quick_gelu"}:
        raise UserError(f"hidden_act {sorted(acts)}: only gelu or quick_gelu, the same in both towers, are supported")
    eos = int(tc.get("eos_token_id", 2))
    return ClipModelConfig(
        image_size=int(vc.get("image_size", 224)), patch_size=int(vc.get("patch_size", 32)),
        vision=TowerConfig(int(vc.get("hidden_size", 768)), int(vc.get("num_hidden_layers", 12)),
                           int(vc.get("num_attention_heads", 12)), int(vc.get("intermediate_size", 3072))),
        text=TowerConfig(int(tc.get("hidden_size", 512)), int(tc.get("num_hidden_layers", 12)),
                         int(tc.get("num_attention_heads", 8)), int(tc.get("intermediate_size", 2048))),
        vocab_size=int(tc.get("vocab_size", 49408)), context_length=int(tc.get("max_position_embeddings", 77)),
        embed_dim=int(d.get("projection_dim", 512)), act=acts.pop(), eps=float(tc.get("layer_norm_eps", 1e-5)),
        pool="argmax" if eos == 2 else "eos", eos_token_id=eos)  # HF's legacy rule for eos id 2


def hf_config(c: ClipModelConfig, tokenizer=None) -> dict:
    from transformers import CLIPConfig
    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    elif c.pool == "eos":  # no tokenizer to ask: the ids HF's defaults would put out of the vocabulary
        ids = {"bos_token_id": c.eos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.eos_token_id}
    text = dict(vocab_size=c.vocab_size, hidden_size=c.text.width, intermediate_size=c.text.mlp_dim,
                num_hidden_layers=c.text.layers, num_attention_heads=c.text.heads,
                max_position_embeddings=c.context_length, hidden_act=c.act, layer_norm_eps=c.eps,
                projection_dim=c.embed_dim, **{k: v for k, v in ids.items() if v is not None})
    if c.pool == "argmax":
        text["eos_token_id"] = 2  # HF pools at the largest id only for this legacy value
    vision = dict(hidden_size=c.vision.width, intermediate_size=c.vision.mlp_dim, num_hidden_layers=c.vision.layers,
                  num_attention_heads=c.vision.heads, image_size=c.image_size, patch_size=c.patch_size,
                  hidden_act=c.act, layer_norm_eps=c.eps, projection_dim=c.embed_dim)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=c.embed_dim)
    out = cfg.to_dict()
    out["architectures"] = ["CLIPModel"]
    return out


def _read_safetensors(paths: list[str]) -> dict:
    from safetensors.numpy import load_file
    out = {}
    for p in paths:
        try:
            out.update(load_file(p))
        except Exception as e:  # noqa: BLE001 - a damaged file is the user's to fix; say which
            raise UserError(f"{p}: cannot read safetensors ({str(e).splitlines()[0][:200]})") from None
    return out


def load_hf(path: str, param_dtype=np.float32):
    """Local HF CLIPModel folder → (CLIP, ClipModelConfig)."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{path}: no config.json (expected a local Hugging Face CLIPModel folder)")
    with open(cfg_path) as f:
        c = config_from_hf(json.load(f))
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise UserError(f"{path}: no *.safetensors weights (convert a pytorch_model.bin once with "
                        "safetensors.torch.save_file(torch.load(p, weights_only=True), 'model.safetensors'))")
    weights = {k.removeprefix("clip."): v for k, v in _read_safetensors(files).items()}
    model = build_clip(c, param_dtype=param_dtype)
    values = {}
    for key, path_, kind in _hf_keys(c):
        if key not in weights:
            raise UserError(f"{path}: weight {key} is missing")
        w = np.asarray(weights[key], np.float32)
        values[path_] = w.T if kind == "t" else _conv_in(w) if kind == "conv" else w
    _set_all(model, values)
    return model, c


def hf_state(model) -> dict:
    """Our params → the HF CLIPModel state dict (numpy float32)."""
    c = model.config
    pure = nnx.to_pure_dict(nnx.state(model))
    out = {}
    for key, path_, kind in _hf_keys(c):
        w = np.asarray(_get(pure, path_), np.float32)
        out[key] = np.array(w.T if kind == "t" else _conv_out(w, c.patch_size) if kind == "conv" else w, order="C")
    return out


def save_hf(model, out_dir: str, tokenizer=None, dtype: str = "float32") -> str:
    """Writes an HF CLIPModel folder (replacing one already there); returns it."""
    from safetensors.numpy import save_file
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    import ml_dtypes
    cast = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    state = {k: v.astype(cast) for k, v in hf_state(model).items()}
    save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump({**hf_config(model.config, tokenizer), "torch_dtype": dtype}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


# ---------------------------------------------------------------- open_clip
def _oc_keys(c: ClipModelConfig):
    """(open_clip key, our path, kind) except the fused q/k/v (handled in pairs)."""
    v, t = "vision_model", "text_model"
    out = [("logit_scale", ("logit_scale",), "id"), ("visual.proj", ("visual_projection", "kernel"), "id"),
           ("text_projection", ("text_projection", "kernel"), "id"),
           ("visual.conv1.weight", (v, "patch_embedding"), "conv"),
           ("visual.class_embedding", (v, "class_embedding"), "id"),
           ("visual.positional_embedding", (v, "position_embedding"), "id"),
           ("token_embedding.weight", (t, "token_embedding"), "id"),
           ("positional_embedding", (t, "position_embedding"), "id")]
    for theirs, ours in (("visual.ln_pre", (v, "pre_layrnorm")), ("visual.ln_post", (v, "post_layernorm")),
                         ("ln_final", (t, "final_layer_norm"))):
        out += [(f"{theirs}.weight", ours + ("scale",), "id"), (f"{theirs}.bias", ours + ("bias",), "id")]
    for prefix, tower, layers in (("visual.transformer", v, c.vision.layers), ("transformer", t, c.text.layers)):
        for i in range(layers):
            oc, ours = f"{prefix}.resblocks.{i}.", (tower, "layers", i)
            for theirs, sub in (("attn.out_proj", "out_proj"), ("mlp.c_fc", "fc1"), ("mlp.c_proj", "fc2")):
                out += [(f"{oc}{theirs}.weight", ours + (sub, "kernel"), "t"),
                        (f"{oc}{theirs}.bias", ours + (sub, "bias"), "id")]
            for theirs, sub in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
                out += [(f"{oc}{theirs}.weight", ours + (sub, "scale"), "id"),
                        (f"{oc}{theirs}.bias", ours + (sub, "bias"), "id")]
            out.append((f"{oc}attn.in_proj", ours, "qkv"))
    return out


def read_openclip_file(path: str) -> dict:
    """An open_clip checkpoint → {key: float32 numpy}; never unpickles arbitrary objects."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: open_clip checkpoint not found")
    if path.endswith(".safetensors"):
        sd = _read_safetensors([path])
    else:
        import torch
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - weights_only refuses code; name the file and why
            raise UserError(f"{path}: not a plain tensor checkpoint ({str(e).splitlines()[0][:200]}); "
                            "convert it to .safetensors where it was made") from None
        obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        sd = {k: v.float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}
    return {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in sd.items()}


def load_openclip(path_or_state, c: ClipModelConfig, param_dtype=np.float32):
    """open_clip checkpoint (path or state dict) → CLIP with config `c` (argmax pooling)."""
    sd = read_openclip_file(path_or_state) if isinstance(path_or_state, str) else path_or_state
    where = path_or_state if isinstance(path_or_state, str) else "open_clip state"
    c = replace(c, pool="argmax")
    if "text_projection.weight" in sd:  # open_clip's nn.Linear variant of the projection
        sd = {**sd, "text_projection": sd["text_projection.weight"].T}
    model = build_clip(c, param_dtype=param_dtype)
    values = {}
    for key, path_, kind in _oc_keys(c):
        if kind == "qkv":
            w, b = sd.get(key + "_weight"), sd.get(key + "_bias")
            if w is None or b is None:
                raise UserError(f"{where}: weight {key}_weight/_bias is missing")
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                n = w.shape[0] // 3
                values[path_ + (name, "kernel")] = w[j * n:(j + 1) * n].T
                values[path_ + (name, "bias")] = b[j * n:(j + 1) * n]
            continue
        if key not in sd:
            raise UserError(f"{where}: weight {key} is missing (is clip.preset the checkpoint's architecture?)")
        w = sd[key]
        values[path_] = w.T if kind == "t" else _conv_in(w) if kind == "conv" else w
    try:
        _set_all(model, values)
    except UserError as e:
        raise UserError(f"{where}: {e} (is clip.preset the checkpoint's architecture?)") from None
    return model, c


def openclip_state(model) -> dict:
    """Our params → an open_clip `CLIP` state dict (numpy float32)."""
    c = model.config
    pure = nnx.to_pure_dict(nnx.state(model))
    out = {}
    for key, path_, kind in _oc_keys(c):
        if kind == "qkv":
            sub = [_get(pure, path_ + (n,)) for n in ("q_proj", "k_proj", "v_proj")]
            out[key + "_weight"] = np.concatenate([np.asarray(s["kernel"]).T for s in sub])
            out[key + "_bias"] = np.concatenate([np.asarray(s["bias"]) for s in sub])
            continue
        w = np.asarray(_get(pure, path_), np.float32)
        out[key] = w.T if kind == "t" else _conv_out(w, c.patch_size) if kind == "conv" else w
    return {k: np.array(v, np.float32, order="C") for k, v in out.items()}
