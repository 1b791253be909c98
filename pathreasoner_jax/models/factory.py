"""Builds a PathVLM directly in its shardings: random init (jitted with out_shardings,
so no replicated copy ever exists) and, when `model.llm.hf_path` is set, the LLM weights
streamed from the Hugging Face directory. The random init of the LLM leaves that the
checkpoint replaces is never computed (XLA removes the unused outputs).
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from jax.sharding import Mesh

from pathreasoner_jax.hf import weights as hf_weights
from pathreasoner_jax.config import ModelConfig
from pathreasoner_jax.models.vlm import PathVLM
from pathreasoner_jax.sharding import make_mesh, state_shardings


def resolve_model_config(cfg: ModelConfig, vocab_size: int | None = None) -> ModelConfig:
    """Fills the LLM sizes from `llm.hf_path` when set; grows the vocabulary to the tokenizer."""
    llm = cfg.llm
    if llm.hf_path:
        llm = hf_weights.llm_config_from_hf(llm.hf_path)
    if vocab_size is not None and vocab_size > llm.vocab_size:
        if cfg.llm.hf_path:
            raise ValueError(f"{cfg.llm.hf_path}: tokenizer has {vocab_size} tokens but the model only "
                             f"{llm.vocab_size} embeddings")
        llm = dataclasses.replace(llm, vocab_size=vocab_size)
    return dataclasses.replace(cfg, llm=llm)


def abstract_model(cfg: ModelConfig, image_token_id: int, seed: int = 0) -> PathVLM:
    return nnx.eval_shape(lambda: PathVLM(cfg, nnx.Rngs(seed), image_token_id))


def create_model(cfg: ModelConfig, image_token_id: int, mesh: Mesh | None = None, seed: int = 0) -> PathVLM:
    """`cfg` must be resolved (`resolve_model_config`)."""
    hf_dir = cfg.llm.hf_path

    def loader(abs_state, shardings):
        loaded = hf_weights.load_llm_arrays(hf_dir, cfg.llm, abs_state["llm"], shardings["llm"])
        return {("llm",) + p: a for p, a in loaded.items()}
    return create_sharded(lambda: PathVLM(cfg, nnx.Rngs(seed), image_token_id), mesh, loader if hf_dir else None)


def create_sharded(make, mesh: Mesh | None = None, loader=None):
    """The module `make()` builds, every leaf created in its sharding: `loader(abstract state,
    shardings)` → {state path: array} supplies some leaves (checkpoint weights); the rest
    are initialised by a jit with out_shardings that never computes the loaded ones."""
    mesh = mesh or make_mesh(1, -1, 1)
    graphdef, abs_state = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(abs_state, mesh)
    loaded = loader(abs_state, shardings) if loader is not None else {}

    def keep(path, _):
        return tuple(path) not in loaded

    def init():
        state = nnx.state(make())
        return nnx.filter_state(state, keep) if loaded else state

    rest_shardings = nnx.filter_state(shardings, keep) if loaded else shardings
    rest = jax.jit(init, out_shardings=rest_shardings)()
    if not loaded:
        return nnx.merge(graphdef, rest)
    flat = dict(nnx.to_flat_state(rest))
    abs_flat = dict(nnx.to_flat_state(abs_state))
    for path, arr in loaded.items():
        flat[path] = abs_flat[path].replace(arr)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
