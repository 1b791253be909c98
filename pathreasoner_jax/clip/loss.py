"""Contrastive losses over the whole global batch, as large-batch CLIP training does them.

Each device holds b = B / D rows of unit image and text embeddings. Inside `shard_map`
it all-gathers both (B, E), scores its own rows against the global batch, and returns
the sum of its rows' losses; the sums are `psum`med. Gradients flow back through the
gather (its transpose is a reduce-scatter), so every row's gradient includes the terms
where it is another device's negative: the result equals the single-device loss on
the same B rows, and so does its gradient (tests/test_clip_loss.py).

Losses are (sum, denominator) pairs so micro-batching stays exact (step.py):
- `infonce`: Σ_i ½ (CE(row i of s·I·Tᵀ, i) + CE(row i of s·T·Iᵀ, i)), denominator B
  (CLIP; open_clip's `ClipLoss`).
- `siglip`: Σ_i Σ_j −log σ(z_ij (s·I_i·T_j + b)), z = +1 on the diagonal, −1 elsewhere;
  denominator B (SigLIP normalises by the batch size, not B²).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

LOSSES = ("infonce", "siglip")
ROWS = ("data", "fsdp")


def _row_losses(kind, img_be, txt_be, img_all, txt_all, scale, bias, offset):
    """Losses of the local rows (b,) against the global batch (B rows)."""
    b = img_be.shape[0]
    logits_i2t = scale * img_be @ txt_all.T  # (b, B)
    target = offset + jnp.arange(b)
    if kind == "infonce":
        logits_t2i = scale * txt_be @ img_all.T
        ce = lambda z: jax.nn.logsumexp(z, -1) - z[jnp.arange(b), target]  # noqa: E731
        return 0.5 * (ce(logits_i2t) + ce(logits_t2i))
    z = jnp.where(jnp.arange(img_all.shape[0])[None, :] == target[:, None], 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(z * (logits_i2t + bias)), -1)


def contrastive_loss(kind: str, img_be, txt_be, logit_scale, logit_bias=None, mesh: Mesh | None = None,
                     max_logit_scale: float = 100.0):
    """Unit embeddings (B, E) (rows over data × fsdp when `mesh` is given) → (loss sum, B).
    `logit_scale` is the log of the temperature's inverse; exp of it is clamped to
    `max_logit_scale`."""
    if kind not in LOSSES:
        raise ValueError(f"unknown contrastive loss {kind!r} (known: {', '.join(LOSSES)})")
    scale = jnp.exp(jnp.minimum(logit_scale, jnp.log(max_logit_scale)))
    bias = jnp.zeros(()) if logit_bias is None else logit_bias
    axes = tuple(a for a in ROWS if mesh is not None and mesh.shape.get(a, 1) > 1)
    if not axes:
        losses = _row_losses(kind, img_be, txt_be, img_be, txt_be, scale, bias, 0)
        return jnp.sum(losses), jnp.float32(img_be.shape[0])

    @partial(jax.shard_map, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=(P(), P()))
    def sharded(img_l, txt_l, s, bb):
        img_all = jax.lax.all_gather(img_l, axes, tiled=True)
        txt_all = jax.lax.all_gather(txt_l, axes, tiled=True)
        offset = jax.lax.axis_index(axes) * img_l.shape[0]
        losses = _row_losses(kind, img_l, txt_l, img_all, txt_all, s, bb, offset)
        return jax.lax.psum(jnp.sum(losses), axes), jax.lax.psum(jnp.float32(img_l.shape[0]), axes)

    return sharded(img_be, txt_be, scale, bias)
