"""`pathreasoner hf-import` and `hf-export`.

hf-import: a local HF Qwen2 directory → an orbax checkpoint (step 0) of the whole VLM: the
LLM from the directory, the slide encoder and projector freshly initialised from the
config. The folder is checked first (config.json, safetensors weights, a tokenizer unless
model.tokenizer_path names one); anything missing is one line naming the folder.
The meta records the HF config.json, the source folder, the config used and the model's
fields (`record.model_fields`); a later restore into a model that differs in any of them
(`checkpoint.Checkpointer.restore`) is refused in one line naming the fields.

`--config` is optional, by decision: without it the slide encoder, projector and LoRA
take the defaults (`config/schema.py`), the meta says so (`"config": "<defaults>"`), a
note is printed, and the record above catches a training config that differs, so the
defaults can no longer pass silently. Import with the training config to avoid that.

hf-export: a checkpoint → a self-describing directory (`export.py`, layout in `layout.py`):
a standard HF Qwen2 directory (LoRA merged, generation_config.json, the tokenizer with
its chat template and tags) plus `slide_encoder/`, loadable in PyTorch with
`torch_vlm.load_exported_vlm`.
"""
from __future__ import annotations

import json
import os

from pathreasoner_jax.core.errors import UserError, one_line

DEFAULTS = "<defaults>"


def check_hf_dir(hf_dir: str, tokenizer_dir: str) -> dict:
    """The parsed config.json of a usable HF Qwen2 folder; UserError (one line) otherwise."""
    from pathreasoner_jax.hf.weights import llm_config_from_hf

    if not os.path.isdir(hf_dir):
        raise UserError(f"{hf_dir}: not a directory (--hf-dir wants a local Hugging Face model folder)")
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        raise UserError(f"{hf_dir}: no config.json, not a Hugging Face model folder")
    try:
        llm_config_from_hf(hf_dir)
    except (OSError, ValueError) as e:
        raise UserError(one_line(e)) from None
    if not any(os.path.exists(os.path.join(hf_dir, n)) for n in ("model.safetensors", "model.safetensors.index.json")):
        raise UserError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json (only safetensors "
                        "weights are read)")
    tok_files = [n for n in ("tokenizer.json", "vocab.json", "tokenizer.model") if os.path.exists(
        os.path.join(tokenizer_dir, n))] if os.path.isdir(tokenizer_dir) else []
    if not tok_files:
        raise UserError(f"{tokenizer_dir}: no tokenizer (tokenizer.json or vocab.json + merges.txt); set "
                        "model.tokenizer_path to a tokenizer folder")
    with open(os.path.join(hf_dir, "config.json")) as f:
        return json.load(f)


def run_import(args) -> int:
    """HF directory → orbax checkpoint of the whole VLM (slide encoder/projector freshly initialised)."""
    from pathreasoner_jax.checkpoint import Checkpointer
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.hf.record import RECORD_KEY, model_fields
    from pathreasoner_jax.models.factory import create_model, resolve_model_config
    from pathreasoner_jax.sharding import mesh_from_config, use_mesh
    from pathreasoner_jax.tokenizer import load_tokenizer, special_ids

    cfg = load_config(args.config or None, list(args.overrides) + [f"model.llm.hf_path={args.hf_dir}"])
    tok_dir = cfg.model.tokenizer_path or args.hf_dir
    hf_config = check_hf_dir(args.hf_dir, tok_dir)
    try:
        tok = load_tokenizer(tok_dir)
        mcfg = resolve_model_config(cfg.model, len(tok))
        mesh = mesh_from_config(cfg.mesh)
        with use_mesh(mesh):
            model = create_model(mcfg, special_ids(tok).image, mesh, cfg.run.seed)
    except (OSError, ValueError, KeyError) as e:  # transformers' and our loaders' complaints: one line
        raise UserError(f"{args.hf_dir}: cannot be imported ({one_line(e)})") from None
    if not args.config:
        print("hf-import: no --config: slide encoder, projector and LoRA use the defaults (recorded in the "
              "checkpoint; a training config that differs is refused at restore)")
    ck = Checkpointer(args.out, keep_last=1, async_save=False)
    ck.save(0, model, meta={"step": 0, "source": os.path.abspath(args.hf_dir), "hf_config": hf_config,
                            "config": os.path.abspath(args.config) if args.config else DEFAULTS,
                            RECORD_KEY: model_fields(model)})
    ck.close()
    print(f"hf-import: {args.hf_dir} → {args.out}")
    return 0


def run_export(args) -> int:
    """Checkpoint → HF directory (LoRA merged) + slide_encoder/ (see export.py)."""
    from pathreasoner_jax.checkpoint import restore_params
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.hf.export import export_vlm
    from pathreasoner_jax.runtime import setup

    rt = setup(load_config(args.config, args.overrides))
    ckpt = args.checkpoint or rt.layout.final_checkpoint()
    model = rt.build_model()
    restore_params(ckpt, model)
    export_vlm(model, rt.model_cfg, rt.tokenizer, rt.ids, args.out, dtype=args.dtype)
    print(f"hf-export: {ckpt} → {args.out}")
    return 0
