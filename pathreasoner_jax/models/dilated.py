"""Dilated attention, LongNet's core (SPEC §3), on one device: the branches and their merge.

Per branch (segment w, dilation r): the effective segment is min(w, N); the sequence is
padded to whole segments, and each segment inside to a multiple of r with masked
positions. Heads are split into groups of ceil(H / r) heads; group j keeps positions j,
j+r, j+2r, ... of every segment (torchscale's `dense_to_sparse`). Within the kept
positions attention is ordinary non-causal softmax attention with padded keys masked.
Branch outputs merge per position and head with weights softmax_b(stop_gradient(lse_b)).
`longnet.py` builds the encoder on these; `longnet_context.py` runs them on a patch
sequence split over devices.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e30


def _attend(q, k, v, key_valid):
    """q/k/v (..., L, G, Dh) over the L axis; key_valid (..., L). Returns out, lse (..., L, G)."""
    return attend_per_head(q, k, v, jnp.broadcast_to(key_valid[..., None], key_valid.shape + (q.shape[-2],)))


def attend_per_head(q, k, v, key_valid_lg):
    """As `_attend` with a key mask per head: key_valid_lg (..., L, G). A head with no valid
    key gets output 0 and lse -inf."""
    s = jnp.einsum("...qgd,...kgd->...gqk", q.astype(jnp.float32), k.astype(jnp.float32))
    valid_gk = jnp.swapaxes(key_valid_lg, -1, -2)
    # An additive mask, not a select on the (Q, L) scores: its backward is the identity,
    # where a select's is another pass over the scores (~10% of the branch's fwd+bwd on CPU).
    s = s + jnp.where(valid_gk, 0.0, _NEG)[..., :, None, :]
    lse = jax.nn.logsumexp(s, axis=-1)
    out = jnp.einsum("...gqk,...kgd->...qgd", jnp.exp(s - lse[..., None]), v.astype(jnp.float32))
    any_valid = jnp.any(valid_gk, -1)  # (..., G)
    out = jnp.where(any_valid[..., None, :, None], out, 0.0)
    lse = jnp.where(any_valid[..., None], lse, -jnp.inf)
    return out, jnp.swapaxes(lse, -1, -2)


def dilated_branch(q_bnhd, k_bnhd, v_bnhd, valid_bn, segment: int, dilation: int):
    """One (segment, dilation) branch. Returns out (B,N,H,Dh) fp32 and lse (B,N,H), -inf where uncovered."""
    b, n, h, dh = q_bnhd.shape
    r = dilation
    seg = min(segment, n)
    n_seg = math.ceil(n / seg)
    seg_r = math.ceil(seg / r) * r  # the segment padded inside to whole dilation steps

    def to_segments(t, fill):
        t = jnp.pad(t, [(0, 0), (0, n_seg * seg - n)] + [(0, 0)] * (t.ndim - 2), constant_values=fill)
        t = t.reshape((b, n_seg, seg) + t.shape[2:])
        return jnp.pad(t, [(0, 0), (0, 0), (0, seg_r - seg)] + [(0, 0)] * (t.ndim - 3), constant_values=fill)
    shape6 = (b, n_seg, seg_r // r, r, h, dh)  # position in segment = i * r + j
    q, k, v = (to_segments(t, 0).reshape(shape6) for t in (q_bnhd, k_bnhd, v_bnhd))
    valid = to_segments(valid_bn, False).reshape(shape6[:4])
    # Head i keeps offset i // group. All groups attend in one call: each head's positions
    # are picked from the offset axis by a one-hot mask (an exact select, not a product),
    # and the results are put back the same way, so there is no per-group slicing or scatter.
    group = math.ceil(h / r)
    keep_rh = jnp.asarray(np.arange(h)[None, :] // group == np.arange(r)[:, None])  # (r, h)

    def pick(t6):
        return jnp.sum(jnp.where(keep_rh[:, :, None], t6, 0), axis=3)  # (b, S, seg_r/r, h, dh)
    valid_h = jnp.any(valid[..., None] & keep_rh, axis=3)  # (b, S, seg_r/r, h)
    o_h, l_h = attend_per_head(pick(q), pick(k), pick(v), valid_h)
    out = jnp.where(keep_rh[:, :, None], o_h[:, :, :, None], 0.0)
    lse = jnp.where(keep_rh, l_h[:, :, :, None], -jnp.inf)
    out = out.reshape(b, n_seg, seg_r, h, dh)[:, :, :seg].reshape(b, n_seg * seg, h, dh)
    lse = lse.reshape(b, n_seg, seg_r, h)[:, :, :seg].reshape(b, n_seg * seg, h)
    return out[:, :n], lse[:, :n]


def merge_branches(outs, lses):
    """Weights softmax over branches of stop_gradient(lse); -inf (uncovered) gets weight 0."""
    lse = jax.lax.stop_gradient(jnp.stack(lses))  # (nb,B,N,H)
    top = jnp.max(lse, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    e = jnp.where(jnp.isfinite(lse), jnp.exp(lse - top), 0.0)
    den = jnp.sum(e, axis=0)
    w = e / jnp.where(den > 0, den, 1.0)
    return jnp.sum(w[..., None] * jnp.stack(outs), axis=0)


def dilated_attention(q_bnhd, k_bnhd, v_bnhd, valid_bn, segments, dilations):
    outs, lses = [], []
    for w, r in zip(segments, dilations):
        o, l = dilated_branch(q_bnhd, k_bnhd, v_bnhd, valid_bn, w, r)
        outs.append(o)
        lses.append(l)
    return merge_branches(outs, lses)
