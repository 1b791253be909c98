"""The Patho-CLIP model a config asks for, on the config's mesh.

Precedence: `clip.hf_path` (a local HF CLIPModel folder) → `clip.openclip_path` (an
open_clip checkpoint in `clip.preset`'s architecture) → `clip.preset` at random init (the
text tower sized to the tokenizer, pooling at its end-of-text id). `clip.image_size` and
`clip.context_length` resize a random-init preset; an imported model's learned position
tables fix both, so a different value there is an error, not a silent interpolation.
"""
from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.clip.convert import load_hf, load_openclip
from pathreasoner_jax.clip.model import PRESETS, CLIP, ClipModelConfig, build_clip, with_siglip
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.sharding import mesh_from_config, shard_state, use_mesh

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(clip_cfg):
    return _DTYPES[clip_cfg.compute_dtype]


def _sized(c: ClipModelConfig, clip_cfg, imported: str) -> ClipModelConfig:
    for key, have in (("image_size", c.image_size), ("context_length", c.context_length)):
        want = getattr(clip_cfg, key)
        if want and want != have:
            if imported:
                raise UserError(f"clip.{key}={want}: {imported} was trained with {have} (its position embeddings "
                                f"fix it); leave clip.{key} at 0")
            c = replace(c, **{key: want})
    if c.image_size % c.patch_size:
        raise UserError(f"clip.image_size={c.image_size} is not a multiple of the patch size {c.patch_size}")
    return c


def build_model(cfg, tokenizer, mesh=None) -> tuple[CLIP, ClipModelConfig]:
    """→ (model placed on `mesh` (default: the config's), its ClipModelConfig)."""
    clip = cfg.clip
    siglip = clip.loss == "siglip"
    if clip.hf_path:
        model, c = load_hf(clip.hf_path)
        source = clip.hf_path
    elif clip.openclip_path:
        model, c = load_openclip(clip.openclip_path, PRESETS[clip.preset])
        source = clip.openclip_path
    else:
        c = replace(PRESETS[clip.preset], vocab_size=len(tokenizer), eos_token_id=int(tokenizer.eos_token_id),
                    pool="eos")
        c = _sized(c, clip, "")
        model, source = build_clip(with_siglip(c) if siglip else c, seed=cfg.run.seed), ""
    if source:
        _sized(c, clip, source)
        if len(tokenizer) > c.vocab_size:
            raise UserError(f"the tokenizer has {len(tokenizer)} tokens, more than {source}'s vocabulary "
                            f"({c.vocab_size}); use the tokenizer the weights were trained with (clip.tokenizer_path)")
        if siglip and model.logit_bias is None:  # a CLIP checkpoint fine-tuned with the SigLIP loss
            c = with_siglip(c)
            model.config = c
            model.logit_bias = nnx.Param(jnp.asarray(c.logit_bias_init, jnp.float32), logical_axes=())
    mesh = mesh or mesh_from_config(cfg.mesh)
    with use_mesh(mesh):
        nnx.update(model, shard_state(nnx.state(model), mesh))
    return model, model.config
