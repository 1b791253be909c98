"""Jitted sampler: prefill once, then a `lax.while_loop` decode over a preallocated cache.

Shared prefix (GRPO): the P prompts (slide tokens + question) are prefilled once; their
KV cache is kept at P rows and the P·G completions attend to it through
`shared_prefix_attention`, each with a small own cache for the generated tokens only —
no G-fold prefill and no G copies of the prefix cache. `shared_prefix=False` repeats
each prompt G times and prefills every copy (the reference's approach, for comparison).

Randomness depends only on (key, step, row), so both layouts draw the same samples.
Log-probs are those of the sampling policy softmax(logits / temperature) at the chosen
token, before top-k/top-p truncation (as verl/TRL report them); the GRPO trainer
recomputes them the same way. The completion mask covers tokens up to and including
the first EOS; rows stop independently and the loop ends when all have stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.models.qwen2 import init_cache


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    group_size: int = 1
    shared_prefix: bool = True


def filter_logits(logits_bv: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Masks logits outside the top-k and outside the smallest set with mass ≥ top_p."""
    if top_k and top_k < logits_bv.shape[-1]:
        kth = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth, -jnp.inf, logits_bv)
    if top_p < 1.0:
        sorted_l = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_l, -1), -1)
        # keep a token if the mass before it is < top_p (the first token always stays)
        cutoff_idx = jnp.sum(cum - jax.nn.softmax(sorted_l, -1) < top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(sorted_l, cutoff_idx, -1)
        logits_bv = jnp.where(logits_bv < cutoff, -jnp.inf, logits_bv)
    return logits_bv


def _choose(logits_bv, key, step, p: SamplingParams):
    """Returns (token (B,), log-prob under softmax(logits / T) (B,))."""
    scaled = logits_bv / (1.0 if p.greedy else p.temperature)
    logp = jax.nn.log_softmax(scaled, -1)
    if p.greedy:
        tok = jnp.argmax(logits_bv, -1)
    else:
        filtered = filter_logits(scaled, p.top_k, p.top_p)
        keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, step), r))(
            jnp.arange(logits_bv.shape[0]))
        tok = jax.vmap(jax.random.categorical)(keys, filtered)
    return tok.astype(jnp.int32), jnp.take_along_axis(logp, tok[:, None], -1)[:, 0]


def next_positions(positions, valid_bt) -> jax.Array:
    """(B,) the first free position after each row's valid tokens ((B,T) or M-RoPE (B,T,3) ids)."""
    p = positions if positions.ndim == 2 else jnp.max(positions, axis=-1)
    return jnp.max(jnp.where(valid_bt, p, -1), axis=1) + 1


def last_valid(x_btd, valid_bt):
    """(B, D): each row's state at its last valid token."""
    idx = jnp.maximum(valid_bt.shape[1] - 1 - jnp.argmax(valid_bt[:, ::-1], axis=1), 0)
    return jnp.take_along_axis(x_btd, idx[:, None, None], axis=1)[:, 0]


def sample_fn(model, ids_bt, text_valid_bt, features_bpf, patch_valid_bp, key, *,
              params: SamplingParams, eos_id: int, pad_id: int):
    """Samples G = params.group_size completions per prompt (`sample` is this, jitted;
    `pod/stages.py` lowers it with explicit shardings for a TPU topology).

    Returns dict with `tokens` (B·G, N) int32, `logprobs` (B·G, N) fp32, `mask` (B·G, N)
    bool, `lengths` (B·G,), rows ordered prompt-major (row = prompt·G + g).
    """
    p, g, n = params, params.group_size, params.max_new_tokens
    ctx = model.ctx()
    llm = model.llm
    x, valid, pos = model.inputs(ids_bt, text_valid_bt, features_bpf, patch_valid_bp, ctx)
    if not p.shared_prefix and g > 1:
        x, valid, pos = jnp.repeat(x, g, 0), jnp.repeat(valid, g, 0), jnp.repeat(pos, g, 0)
    rows, t = valid.shape
    # decoding continues at the first free position (the prompt length, or past M-RoPE's image extents)
    prompt_len = next_positions(pos, valid).astype(jnp.int32)
    if p.shared_prefix:
        prefix = init_cache(llm.d, rows, t, ctx.dtype)
        hidden, prefix = llm(x, pos, valid, ctx, prefix, fresh_cache=True)
        prefix_kv = {"k": prefix["k"], "v": prefix["v"], "valid": prefix["kv_valid"]}
        cache = init_cache(llm.d, rows * g, n, ctx.dtype)
        first_logits = jnp.repeat(llm.logits(last_valid(hidden, valid)), g, 0)
        prompt_len = jnp.repeat(prompt_len, g, 0)
    else:
        prefix_kv = None
        cache = init_cache(llm.d, rows, t + n, ctx.dtype)
        hidden, cache = llm(x, pos, valid, ctx, cache, fresh_cache=True)
        first_logits = llm.logits(last_valid(hidden, valid))
    b = first_logits.shape[0]
    tok0, lp0 = _choose(first_logits, key, 0, p)
    tokens = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok0)
    logprobs = jnp.zeros((b, n), jnp.float32).at[:, 0].set(lp0)
    done = tok0 == eos_id
    mask = jnp.zeros((b, n), bool).at[:, 0].set(True)

    def cond(state):
        step, _, _, _, done, _ = state
        return (step < n) & ~jnp.all(done)

    def body(state):
        step, tokens, logprobs, mask, done, cache = state
        last = jax.lax.dynamic_slice_in_dim(tokens, step - 1, 1, axis=1)
        emb = llm.embed(last, ctx)
        pos = (prompt_len + step - 1)[:, None]
        one = jnp.ones((b, 1), bool)
        hidden, cache = llm(emb, pos, one, ctx, cache, prefix_kv)
        tok, lp = _choose(llm.logits(hidden[:, 0]), key, step, p)
        live = ~done
        tok = jnp.where(live, tok, pad_id)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], step, axis=1)
        logprobs = jax.lax.dynamic_update_slice_in_dim(logprobs, jnp.where(live, lp, 0.0)[:, None], step, axis=1)
        mask = jax.lax.dynamic_update_slice_in_dim(mask, live[:, None], step, axis=1)
        done = done | (tok == eos_id)
        return step + 1, tokens, logprobs, mask, done, cache

    _, tokens, logprobs, mask, done, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(1), tokens, logprobs, mask, done, cache))
    return {"tokens": tokens, "logprobs": logprobs, "mask": mask, "lengths": jnp.sum(mask, 1),
            "truncated": ~done}


sample = nnx.jit(sample_fn, static_argnames=("params", "eos_id", "pad_id"))
