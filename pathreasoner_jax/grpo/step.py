"""GRPO's pure functions: sequence assembly, log-probs, and the update step.

A training row is [left-padded prompt (Tp) | completion (N)]: the hidden state at
Tp−1+j predicts completion token j, exactly as in the sampler, so the recomputed
log-probs equal the sampler's. Log-probs are of softmax(logits / temperature).

Old log-probs are recomputed here with the same dropout key that every inner epoch of
the update uses for that batch, so at the first inner epoch the ratio is exactly 1
(the reference computes them in eval mode and updates in train mode: defect 6).

An update whose advantages, loss, gradient norm or new params are not finite keeps the
params and optimizer state it was given (decided inside the jit: both are donated) and
reports `skipped` = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pathreasoner_jax.grpo.losses import policy_loss, token_entropy
from pathreasoner_jax.models.vlm import target_logprobs
from pathreasoner_jax.sharding import use_mesh
from pathreasoner_jax.train.micro import accumulate_grads, merge_rows, micro_key, split_rows
from pathreasoner_jax.train.params import finite_or_keep, init_opt_state, is_abstract, make_optimizer


def assemble(prompt: dict, rollout: dict, group: int, image_id: int, shared_prefix: bool = True) -> dict:
    """Prompt batch (B rows) + rollout (B·G rows) → what the log-prob passes and the update take.

    shared_prefix: {"prompt": the B prompts, "completion" (B·G, N) tokens, "completion_valid"
    (B·G, N), "mask" (B·G, N) loss mask}; each prompt runs once and its G completions attend
    to its KV (`shared_prefix_hidden`), as in the rollout. Otherwise B·G full rows (Tp + N),
    each prompt repeated G times. Only the prompt's image tokens are slide slots; the id in a
    completion is plain text.
    """
    if shared_prefix:
        return {"prompt": {k: prompt[k] for k in ("ids", "text_valid", "features", "patch_valid")},
                "completion": rollout["tokens"], "completion_valid": rollout["mask"],
                "mask": rollout["mask"].astype(jnp.float32)}
    rep = lambda x: jnp.repeat(x, group, axis=0)  # noqa: E731
    slots = prompt["ids"] == image_id
    return {"ids": jnp.concatenate([rep(prompt["ids"]), rollout["tokens"]], 1),
            "image_slots": jnp.concatenate([rep(slots), jnp.zeros_like(rollout["mask"])], 1),
            "text_valid": jnp.concatenate([rep(prompt["text_valid"]), rollout["mask"]], 1),
            "features": jax.tree.map(rep, prompt["features"]), "patch_valid": rep(prompt["patch_valid"]),
            "mask": rollout["mask"].astype(jnp.float32)}


def shared_prefix_hidden(model, seq: dict, ctx) -> jax.Array:
    """(B·G, N, D) hidden states that predict the completion tokens, each of the B prompts
    run once: its KV is the prefix its G completions attend to (the sampler's layout, so
    these are the sampler's computations, and the slide tokens are not recomputed G times)."""
    from pathreasoner_jax.generate import last_valid, next_positions
    from pathreasoner_jax.models.qwen2 import init_cache
    p, comp, llm = seq["prompt"], seq["completion"], model.llm
    x, valid, pos = model.inputs(p["ids"], p["text_valid"], p["features"], p["patch_valid"], ctx)
    (b, tp), (r, n) = valid.shape, comp.shape
    g = r // b
    hidden_p, prefix = llm(x, pos, valid, ctx, init_cache(llm.d, b, tp, ctx.dtype), fresh_cache=True)
    prefix_kv = {"k": prefix["k"], "v": prefix["v"], "valid": prefix["kv_valid"]}
    cpos = jnp.repeat(next_positions(pos, valid), g)[:, None] + jnp.arange(n)[None]
    hidden_c, _ = llm(llm.embed(comp, ctx), cpos, seq["completion_valid"], ctx, init_cache(llm.d, r, n, ctx.dtype),
                      prefix_kv)
    first = jnp.repeat(last_valid(hidden_p, valid), g, axis=0)[:, None]  # the prompt's last state predicts token 0
    return jnp.concatenate([first, hidden_c[:, :-1]], axis=1)


def completion_logits(model, seq: dict, ctx, n_new: int, temperature: float):
    """(B, N, V) fp32 logits / T at the positions that predict the completion tokens."""
    if "prompt" in seq:
        return model.llm.logits(shared_prefix_hidden(model, seq, ctx)) / temperature
    hidden, _ = model(seq["ids"], seq["text_valid"], seq["features"], seq["patch_valid"], ctx,
                      image_slots_bt=seq["image_slots"])
    t_total = seq["ids"].shape[1]
    h = hidden[:, t_total - n_new - 1: t_total - 1]
    return model.llm.logits(h) / temperature


def completion_tokens(seq: dict, n_new: int) -> jax.Array:
    return seq["completion"] if "prompt" in seq else seq["ids"][:, -n_new:]


def completion_logprobs(model, seq: dict, ctx, n_new: int, temperature: float):
    logits = completion_logits(model, seq, ctx, n_new, temperature)
    targets = completion_tokens(seq, n_new)
    return target_logprobs(logits, targets)


def _grouped(tree, groups: int):
    """(B·G, ...) leaves → (B, G, ...), so that micro-batches split whole prompts."""
    return jax.tree.map(lambda x: x.reshape((groups, x.shape[0] // groups) + x.shape[1:]), tree)


def _flat(tree):
    return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)


def by_prompt(seq: dict, *rows):
    """Shared-prefix rows in prompt-major groups (`split_rows` then splits prompts, not
    completions): → (tree, unpack) with unpack(micro-batch) → (seq, *rows) flat again."""
    if "prompt" not in seq:
        return (seq, *rows), lambda mb: mb
    b = seq["prompt"]["ids"].shape[0]
    per_row = {k: v for k, v in seq.items() if k != "prompt"}
    tree = (seq["prompt"], _grouped(per_row, b), _grouped(rows, b))

    def unpack(mb):
        prompt, per, rs = mb
        return ({"prompt": prompt, **_flat(per)}, *_flat(rs))
    return tree, unpack


@dataclass
class GRPOStep:
    graphdef: Any
    tx: optax.GradientTransformation
    mesh: Mesh
    n_new: int
    temperature: float
    clip_eps_low: float
    clip_eps_high: float
    loss_agg: str
    kl_mode: str
    kl_beta: float
    use_lora_for_ref: bool
    schedule: Callable = None  # step → learning rate (constant for GRPO)
    micro_batches: int = 1  # the rows of a log-prob pass / update go through in this many splits

    def logprobs(self, trainable, frozen, seq, rng):
        """Policy log-probs (B,N) in training mode (dropout from `rng`; None: off)."""
        return self._micro_logprobs(trainable, frozen, seq, rng, lambda model, key: model.ctx(rng=key))

    def ref_logprobs(self, ref_trainable, frozen, seq):
        """The frozen reference policy (the starting checkpoint), deterministic."""
        return self._micro_logprobs(ref_trainable, frozen, seq, None,
                                    lambda model, _: model.ctx(use_lora=self.use_lora_for_ref))

    def _micro_logprobs(self, trainable, frozen, seq, rng, ctx_of):
        """Log-probs over the `micro_batches` splits of the rows, merged back to (B, N): one
        micro-batch's logits live at a time. Micro-batch i's key is the one `update` gives it,
        so old log-probs and the first inner epoch see the same dropout."""
        tree, unpack = by_prompt(seq)

        def one(xs):
            mb, i = xs
            (rows,) = unpack(mb)
            model = nnx.merge(self.graphdef, trainable, frozen)
            out = completion_logprobs(model, rows, ctx_of(model, micro_key(rng, i)), self.n_new, self.temperature)
            return _grouped(out, mb[0]["ids"].shape[0]) if "prompt" in seq else out
        m = self.micro_batches
        out = merge_rows(jax.lax.map(one, (split_rows(tree, m), jnp.arange(m))), m)
        return _flat(out) if "prompt" in seq else out

    def update(self, trainable, frozen, opt_state, seq, old_logp, ref_logp, adv, rng):
        """One optimizer step on all rows, accumulated over `micro_batches`: the loss is
        Σ sums / Σ denominators (policy_loss's pairs), so any split gives the same step.
        `old_logp` None: on-policy (μ = 1) — the old log-probs are this forward's own,
        stop-gradient (as TRL does for one iteration), so no separate pass computes them
        and the ratio is exactly 1, dropout included."""
        tree, unpack = by_prompt(seq, old_logp, ref_logp, adv)

        def micro_loss(t, mb, key):
            rows, old, ref, a = unpack(mb)
            model = nnx.merge(self.graphdef, t, frozen)
            logits = completion_logits(model, rows, model.ctx(rng=key), self.n_new, self.temperature)
            targets = completion_tokens(rows, self.n_new)
            logp = target_logprobs(logits, targets)
            if old is None:
                old = jax.lax.stop_gradient(logp)
            s, d, m = policy_loss(logp, old, a, rows["mask"], clip_eps_low=self.clip_eps_low,
                                  clip_eps_high=self.clip_eps_high, agg=self.loss_agg, max_len=self.n_new,
                                  ref_logp_bt=ref, kl_mode=self.kl_mode, kl_beta=self.kl_beta)
            ent = token_entropy(jax.lax.stop_gradient(logits))
            m["entropy"] = jnp.sum(ent * rows["mask"]) / jnp.maximum(jnp.sum(rows["mask"]), 1.0)
            return s, (d, m)

        gsum, lsum, dsum, ms = accumulate_grads(micro_loss, trainable, tree, self.micro_batches, rng)
        denom = jnp.maximum(dsum, 1e-8)
        loss, grads = lsum / denom, jax.tree.map(lambda g: g / denom, gsum)
        metrics = _token_weighted(ms)
        grad_norm = optax.global_norm(grads)
        updates, new_opt = self.tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        trainable, opt_state, skipped = finite_or_keep((loss, grad_norm, adv), new_trainable, new_opt,
                                                       trainable, opt_state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, skipped=skipped)
        return trainable, opt_state, metrics

    def jit_all(self, trainable, frozen, opt_state, rows: NamedSharding | None = None):
        """Jitted (logprobs, ref_logprobs, update) with shardings read off the live state;
        row arrays split by `rows` (default: over data × fsdp)."""
        sh = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
        rep = NamedSharding(self.mesh, P())
        rows = rows or NamedSharding(self.mesh, P(("data", "fsdp")))

        def under_mesh(fn):
            def wrapped(*args):
                with use_mesh(self.mesh):
                    return fn(*args)
            return wrapped
        lp = jax.jit(under_mesh(self.logprobs), in_shardings=(sh(trainable), sh(frozen), rows, None),
                     out_shardings=rows)
        ref = jax.jit(under_mesh(self.ref_logprobs), in_shardings=(sh(trainable), sh(frozen), rows),
                      out_shardings=rows)
        upd = jax.jit(under_mesh(self.update),
                      in_shardings=(sh(trainable), sh(frozen), sh(opt_state), rows, rows, rows, rows, None),
                      out_shardings=(sh(trainable), sh(opt_state), rep), donate_argnums=(0, 2))
        return lp, ref, upd

    def jit_on_policy_update(self, trainable, frozen, opt_state, rows: NamedSharding | None = None):
        """Jitted `update` with old log-probs taken from its own forward (μ = 1):
        (trainable, frozen, opt_state, seq, ref_logp, adv, rng) → as `update`."""
        sh = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
        rows = rows or NamedSharding(self.mesh, P(("data", "fsdp")))

        def fn(trainable, frozen, opt_state, seq, ref_logp, adv, rng):
            with use_mesh(self.mesh):
                return self.update(trainable, frozen, opt_state, seq, None, ref_logp, adv, rng)
        return jax.jit(fn, in_shardings=(sh(trainable), sh(frozen), sh(opt_state), rows, rows, rows, None),
                       out_shardings=(sh(trainable), sh(opt_state), NamedSharding(self.mesh, P())),
                       donate_argnums=(0, 2))


def _token_weighted(ms: dict) -> dict:
    """Per-micro-batch token means (M,) → one mean over all tokens; `n_tokens` summed."""
    n = ms["n_tokens"]
    total = jnp.maximum(jnp.sum(n), 1.0)
    out = {k: jnp.sum(v * n) / total for k, v in ms.items() if k != "n_tokens"}
    out["n_tokens"] = jnp.sum(n)
    return out


def make_grpo_step(model, grpo_cfg, is_trainable: Callable, mesh: Mesh, use_lora_for_ref: bool):
    """Returns (GRPOStep, trainable, frozen, opt_state, ref_trainable)."""
    graphdef, trainable, frozen = nnx.split(model, is_trainable, ...)
    tx, sched = make_optimizer(grpo_cfg.lr, max(grpo_cfg.steps, 1), 0.0, grpo_cfg.weight_decay, grpo_cfg.grad_clip,
                           schedule="constant")
    opt_state = init_opt_state(tx, trainable, mesh)
    ref_trainable = trainable if is_abstract(trainable) else jax.tree.map(jnp.copy, trainable)
    step = GRPOStep(graphdef, tx, mesh, grpo_cfg.max_new_tokens, grpo_cfg.temperature, grpo_cfg.clip_eps_low,
                    grpo_cfg.clip_eps_high, grpo_cfg.loss_agg, grpo_cfg.kl_mode, grpo_cfg.kl_beta,
                    use_lora_for_ref, sched, grpo_cfg.micro_batches)
    return step, trainable, frozen, opt_state, ref_trainable
