"""The jitted functions training runs — the SFT train step, the GRPO log-prob pass and
update, and the rollout sampler — lowered over abstract, sharded state for a mesh of
(possibly deviceless) devices. No weight is allocated: the model comes from
`nnx.eval_shape`, each leaf a ShapeDtypeStruct carrying the NamedSharding that
`sharding.state_shardings` gives it, and the optimizer state the shardings the live
`init_opt_state` would produce.

Shapes (what a training run meets at its largest):
- SFT: sft.batch_size rows × T = bucket(sample_num + data.max_text_len) tokens, P =
  data.sample_num patches of slide.feature_dim features.
- GRPO: grpo.prompts_per_step prompts of Tp = bucket(sample_num + question_tokens)
  tokens, G = grpo.group_size completions of N = grpo.max_new_tokens; the update and
  the log-prob pass take the B·G assembled rows of Tp + N tokens.
- Rollout: the sampler on those prompts (prefill + the decode loop).
Row batches are split over (data, fsdp) by the `batch` rule (replicated when the row
count does not divide), as `train.stage.shard_rows` does in training.
"""
from __future__ import annotations

from pathreasoner_jax.core.errors import UserError

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pathreasoner_jax.data.encode import bucket
from pathreasoner_jax.generate import SamplingParams, sample_fn
from pathreasoner_jax.grpo.step import make_grpo_step
from pathreasoner_jax.models.factory import abstract_model, resolve_model_config
from pathreasoner_jax.sft.step import make_sft_step
from pathreasoner_jax.sharding import logical_to_spec, state_shardings
from pathreasoner_jax.train.params import trainable_filter

QUESTION_TOKENS = 64  # text of a GRPO prompt around the slide tokens (chat header + question)


@dataclass
class Lowered:
    """One lowered function: `fn(*args)` is what training calls; `calls` per training step."""
    name: str
    lowered: Any
    calls: float
    shapes: dict


def abstract_sharded_model(model_cfg, mesh: Mesh, seed: int = 0):
    """The PathVLM with every leaf a ShapeDtypeStruct in its sharding on `mesh`."""
    model = abstract_model(model_cfg, model_cfg.llm.vocab_size - 1, seed)
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh)
    sds = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    return nnx.merge(graphdef, sds)


def _rows(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    spec = logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def stage_shapes(cfg) -> dict:
    d, g = cfg.data, cfg.grpo
    p = d.sample_num
    if p <= 0:
        raise UserError("data.sample_num=0 (whole slides) has no size without a corpus: compile with "
                        "data.sample_num=<patches of the largest slide>")
    return {"sft": {"batch": cfg.sft.batch_size, "seq_len": bucket(p + d.max_text_len, d.length_buckets),
                    "patches": p, "grad_accum": cfg.sft.grad_accum},
            "grpo": {"prompts": g.prompts_per_step, "group_size": g.group_size, "patches": p,
                     "prompt_len": bucket(p + QUESTION_TOKENS, d.length_buckets), "new_tokens": g.max_new_tokens,
                     "inner_epochs": g.inner_epochs, "micro_batches": g.micro_batches}}


def _key():
    return jax.eval_shape(lambda: jax.random.key(0))


def lower_sft(cfg, model_cfg, mesh: Mesh) -> list[Lowered]:
    sh = stage_shapes(cfg)["sft"]
    b, t, p, f = sh["batch"], sh["seq_len"], sh["patches"], model_cfg.slide.feature_dim
    model = abstract_sharded_model(model_cfg, mesh, cfg.run.seed)
    step, trainable, frozen, opt = make_sft_step(model, cfg.sft, model_cfg.lora.enabled, mesh, 1000)
    batch = {"ids": _rows(mesh, (b, t), jnp.int32), "text_valid": _rows(mesh, (b, t), jnp.bool_),
             "targets": _rows(mesh, (b, t), jnp.int32), "loss_weight": _rows(mesh, (b, t), jnp.float32),
             "features": _rows(mesh, (b, p, f), jnp.float32), "patch_valid": _rows(mesh, (b, p), jnp.bool_)}
    fn = step.jitted(trainable, frozen, opt, batch)
    lowered = fn.lower(trainable, frozen, opt, batch, _key(), jax.ShapeDtypeStruct((), jnp.int32))
    return [Lowered("sft_step", lowered, 1.0, sh)]


def _grpo_step(cfg, model_cfg, mesh):
    model = abstract_sharded_model(model_cfg, mesh, cfg.run.seed)
    is_trainable = trainable_filter(cfg.sft, model_cfg.lora.enabled)
    return make_grpo_step(model, cfg.grpo, is_trainable, mesh, use_lora_for_ref=False)


def lower_grpo(cfg, model_cfg, mesh: Mesh) -> list[Lowered]:
    sh = stage_shapes(cfg)["grpo"]
    rows = sh["prompts"] * sh["group_size"]
    t, n, p, f = sh["prompt_len"] + sh["new_tokens"], sh["new_tokens"], sh["patches"], model_cfg.slide.feature_dim
    step, trainable, frozen, opt, _ = _grpo_step(cfg, model_cfg, mesh)
    seq = {"ids": _rows(mesh, (rows, t), jnp.int32), "image_slots": _rows(mesh, (rows, t), jnp.bool_),
           "text_valid": _rows(mesh, (rows, t), jnp.bool_), "features": _rows(mesh, (rows, p, f), jnp.float32),
           "patch_valid": _rows(mesh, (rows, p), jnp.bool_), "mask": _rows(mesh, (rows, n), jnp.float32)}
    logp = _rows(mesh, (rows, n), jnp.float32)
    adv = _rows(mesh, (rows,), jnp.float32)
    lp_fn, _, upd_fn = step.jit_all(trainable, frozen, opt, rows=NamedSharding(mesh, P(adv.sharding.spec[0])))
    rng = None if cfg.grpo.disable_dropout else _key()
    passes = 1.0 + (cfg.grpo.kl_mode != "none")  # old log-probs, and the reference's when a KL term is on
    return [Lowered("grpo_logprobs", lp_fn.lower(trainable, frozen, seq, rng), passes, dict(sh, rows=rows)),
            Lowered("grpo_update", upd_fn.lower(trainable, frozen, opt, seq, logp, logp, adv, rng),
                    float(cfg.grpo.inner_epochs), dict(sh, rows=rows))]


def lower_rollout(cfg, model_cfg, mesh: Mesh) -> list[Lowered]:
    sh = stage_shapes(cfg)["grpo"]
    b, t, p, f = sh["prompts"], sh["prompt_len"], sh["patches"], model_cfg.slide.feature_dim
    g = cfg.grpo
    model = abstract_sharded_model(model_cfg, mesh, cfg.run.seed)
    graphdef, state = nnx.split(model)
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                            top_k=g.top_k, group_size=g.group_size, shared_prefix=True)
    vocab = model_cfg.llm.vocab_size

    def rollout(state, ids, valid, feats, pvalid, key):  # the sampler runs outside use_mesh in training too
        return sample_fn(nnx.merge(graphdef, state), ids, valid, feats, pvalid, key, params=params,
                         eos_id=vocab - 2, pad_id=0)
    args = (_rows(mesh, (b, t), jnp.int32), _rows(mesh, (b, t), jnp.bool_), _rows(mesh, (b, p, f), jnp.float32),
            _rows(mesh, (b, p), jnp.bool_))
    shardings = jax.tree.map(lambda x: x.sharding, (state,) + args)
    fn = jax.jit(rollout, in_shardings=shardings + (NamedSharding(mesh, P()),))
    return [Lowered("rollout", fn.lower(state, *args, _key()), 1.0, sh)]


LOWER = {"sft": lower_sft, "grpo": lower_grpo, "rollout": lower_rollout}


def lower_stage(cfg, stage: str, mesh: Mesh, model_cfg=None) -> list[Lowered]:
    model_cfg = model_cfg or resolve_model_config(cfg.model)
    return LOWER[stage](cfg, model_cfg, mesh)


def with_mesh(cfg, data: int, fsdp: int, tensor: int):
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=data, fsdp=fsdp, tensor=tensor))
