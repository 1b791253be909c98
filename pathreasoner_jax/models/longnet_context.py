"""LongNet's dilated attention over a patch sequence split along the `context` mesh axis.

Each of the C devices holds L consecutive positions (the sequence padded to N' = C·L with
invalid patches, L chosen by `local_length`). Per branch (segment w, dilation r), with the
effective segment w' = min(w, N'):
- w' ≤ L (L a multiple of w'): every segment lies inside one device; the branch runs
  locally, exactly as on one device. No communication.
- w' > L (w' a multiple of L, L a multiple of r): a segment spans D = w'/L devices. Head
  group j keeps offsets ≡ j (mod r), the same offsets on every device since r divides L;
  each device all-gathers the *kept* keys and values of its group over `context`
  (B·N'/r·(H/⌈H/…⌉)·Dh each, so K and V together 2·B·N'·H·Dh/r elements per branch per
  layer — the dilation is what keeps it small) and attends its own kept queries to the
  D·L/r keys of its segment. The backward pass reduce-scatters the same amount.
Branch outputs merge per position with the log-sum-exp rule of `dilated.merge_branches`,
which is local. Invalid (padded) keys are masked as on one device, so the result equals
`dilated.dilated_attention` on the unpadded sequence up to float rounding.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pathreasoner_jax.models.dilated import _attend, dilated_branch, merge_branches


def local_length(n: int, c: int, segments, dilations) -> int:
    """The smallest L ≥ ⌈n/c⌉ for which every branch is either local (L % w' == 0) or
    spans whole devices (w' % L == 0, L % r == 0, c·L % w' == 0), w' = min(w, c·L)."""
    start = -(-n // c)
    for length in range(start, 2 * start + 2 * max(segments) + 1):
        ok = True
        for w, r in zip(segments, dilations):
            eff = min(w, c * length)
            whole = eff % length == 0 and length % r == 0 and (c * length) % eff == 0
            if not (length % eff == 0 if eff <= length else whole):
                ok = False
                break
        if ok:
            return length
    raise ValueError(f"no per-device length for {n} patches on context={c} suits segment_lengths {list(segments)} "
                     f"with dilations {list(dilations)} (use powers of two)")


def _spanning_branch(q, k, v, valid, seg: int, r: int, length: int, axis: str):
    """Local (b, L, H, Dh) blocks of a branch whose segments span seg/L devices."""
    b, _, h, dh = q.shape
    per = seg // length
    me = jax.lax.axis_index(axis)
    start = (me // per) * per  # first device of my segment
    shape5 = (b, length // r, r, h, dh)
    q5, k5, v5 = (t.reshape(shape5) for t in (q, k, v))
    valid3 = valid.reshape(b, length // r, r)
    group = math.ceil(h / r)
    out = jnp.zeros(shape5, jnp.float32)
    lse = jnp.full(shape5[:4], -jnp.inf, jnp.float32)
    for j in range(math.ceil(h / group)):
        hs = slice(j * group, min((j + 1) * group, h))

        def segment_of(x):  # (b, L/r, ...) kept here → (b, per·L/r, ...) kept in my segment
            allx = jax.lax.all_gather(x, axis)  # (C, b, L/r, ...)
            mine = jax.lax.dynamic_slice_in_dim(allx, start, per, axis=0)
            return jnp.moveaxis(mine, 0, 1).reshape((b, per * (length // r)) + x.shape[2:])
        o_j, l_j = _attend(q5[:, :, j, hs], segment_of(k5[:, :, j, hs]), segment_of(v5[:, :, j, hs]),
                           segment_of(valid3[:, :, j]))
        out = out.at[:, :, j, hs].set(o_j)
        lse = lse.at[:, :, j, hs].set(l_j)
    return out.reshape(b, length, h, dh), lse.reshape(b, length, h)


def context_dilated_attention(q_bnhd, k_bnhd, v_bnhd, valid_bn, segments, dilations, mesh, batch_spec,
                              axis: str = "context"):
    """`dilated.dilated_attention` with the sequence split over `axis` of `mesh`.

    q/k/v (B, N, H, Dh), valid (B, N); batch_spec: the mesh axes of the batch dimension
    (None or a tuple, as `logical_to_spec` gives them). Returns (B, N, H, Dh) fp32.
    """
    b, n, h, dh = q_bnhd.shape
    c = mesh.shape[axis]
    length = local_length(n, c, segments, dilations)
    pad = c * length - n
    if pad:
        q_bnhd, k_bnhd, v_bnhd = (jnp.pad(t, [(0, 0), (0, pad), (0, 0), (0, 0)]) for t in (q_bnhd, k_bnhd, v_bnhd))
        valid_bn = jnp.pad(valid_bn, [(0, 0), (0, pad)])
    total = c * length
    spec4, spec2 = P(batch_spec, axis, None, None), P(batch_spec, axis)

    @partial(jax.shard_map, mesh=mesh, in_specs=(spec4, spec4, spec4, spec2), out_specs=spec4, check_vma=False)
    def local(q, k, v, valid):
        outs, lses = [], []
        for w, r in zip(segments, dilations):
            seg = min(w, total)
            if seg <= length:
                o, l = dilated_branch(q, k, v, valid, seg, r)
            else:
                o, l = _spanning_branch(q, k, v, valid, seg, r, length, axis)
            outs.append(o)
            lses.append(l)
        return merge_branches(outs, lses)

    return local(q_bnhd, k_bnhd, v_bnhd, valid_bn)[:, :n]
