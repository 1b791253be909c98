"""`pathreasoner hf-import` and `hf-export`: a local HF directory to a checkpoint of the
whole VLM, and a trained checkpoint back to an HF directory (LoRA merged) plus the slide
encoder and projector."""
from __future__ import annotations

import os

import jax
from flax import nnx

from pathreasoner_jax.hf.weights import export_llm, host_array


def export_slide_modules(model, out_dir: str) -> None:
    """LongNet + projector weights next to the LLM: slide_encoder.safetensors (our names)."""
    from safetensors.flax import save_file
    import jax.numpy as jnp

    flat = {}
    for name in ("slide_encoder", "projector"):
        for path, var in nnx.to_flat_state(nnx.state(getattr(model, name))):
            flat[".".join([name, *map(str, path)])] = jnp.asarray(host_array(var.get_value()))
    save_file(flat, os.path.join(out_dir, "slide_encoder.safetensors"), metadata={"format": "flax"})


def run_import(args) -> int:
    """HF directory → orbax checkpoint of the whole VLM (slide encoder/projector freshly initialised)."""
    from pathreasoner_jax.checkpoint import Checkpointer
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.models.factory import create_model, resolve_model_config
    from pathreasoner_jax.sharding import mesh_from_config, use_mesh
    from pathreasoner_jax.tokenizer import load_tokenizer, special_ids

    cfg = load_config(args.config, list(args.overrides) + [f"model.llm.hf_path={args.hf_dir}"])
    tok = load_tokenizer(cfg.model.tokenizer_path or args.hf_dir)
    mcfg = resolve_model_config(cfg.model, len(tok))
    mesh = mesh_from_config(cfg.mesh)
    with use_mesh(mesh):
        model = create_model(mcfg, special_ids(tok).image, mesh, cfg.run.seed)
    ck = Checkpointer(args.out, keep_last=1, async_save=False)
    ck.save(0, model, meta={"step": 0, "source": os.path.abspath(args.hf_dir)})
    ck.close()
    print(f"hf-import: {args.hf_dir} → {args.out}")
    return 0


def run_export(args) -> int:
    """Checkpoint → HF directory: the LLM with LoRA merged, plus slide_encoder.safetensors."""
    from pathreasoner_jax.checkpoint import restore_params
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.runtime import setup

    rt = setup(load_config(args.config, args.overrides))
    ckpt = args.checkpoint or rt.layout.final_checkpoint()
    model = rt.build_model()
    restore_params(ckpt, model)
    export_llm(model.llm, rt.model_cfg.llm, args.out, tokenizer_dir=rt.layout.tokenizer_dir)
    if jax.process_index() == 0:
        export_slide_modules(model, args.out)
    print(f"hf-export: {ckpt} → {args.out}")
    return 0
