"""LongNet slide encoder and projector in PyTorch (imports torch; only `torch_vlm` uses it),
from SPEC §3, with the conventions of `pathreasoner_jax/models/longnet.py` (so weights
transfer by name and outputs agree); the PyTorch baseline of `pathreasoner bench` uses it too.
`cfg` is any object with the SlideEncoderConfig fields (the dataclass, or the namespace
`torch_vlm` builds from an export's slide_encoder/config.json):

- branch (w, r): segment = min(w, N); pad N to whole segments and each segment to a
  multiple of r with masked positions; heads form groups of ceil(H / r); group j keeps positions j, j+r, ... of
  each segment (with r > H the offsets ≥ H are kept by no head);
- softmax attention inside the kept positions, padded keys masked, q scaled by Dh^-0.5;
- merge per position and head with softmax over branches of the detached log-sum-exp;
  an uncovered position (lse = -inf) gets weight 0;
- pre-norm layers with sub-LN (inner LayerNorm before out_proj and before fc2), exact
  GELU, final LayerNorm, optional in_proj when feature_dim != width; dropout and
  drop-path (stochastic depth per sample) in train mode; invalid patches output 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_NEG = -1e30


def _attend(q, k, v, key_valid):
    """q/k/v (..., L, G, Dh); key_valid (..., L). Returns out (..., L, G, Dh), lse (..., L, G)."""
    s = torch.einsum("...qgd,...kgd->...gqk", q.float(), k.float())
    kmask = key_valid[..., None, None, :]
    s = s.masked_fill(~kmask, _NEG)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.where(kmask, torch.exp(s - lse[..., None]), torch.zeros((), device=s.device))
    out = torch.einsum("...gqk,...kgd->...qgd", p, v.float())
    lse = lse.masked_fill(~key_valid.any(-1)[..., None, None], -math.inf)
    return out, lse.transpose(-1, -2)


def dilated_branch(q, k, v, valid, segment: int, dilation: int):
    """q/k/v (B,N,H,Dh), valid (B,N) → out (B,N,H,Dh) fp32, lse (B,N,H) with -inf where uncovered."""
    b, n, h, dh = q.shape
    r = dilation
    seg = min(segment, n)
    n_seg = math.ceil(n / seg)
    seg_r = math.ceil(seg / r) * r

    def to_segments(t, fill):  # (B,N,...) → (B, n_seg, seg_r, ...), padding filled
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, n_seg * seg - n), value=fill)
        t = t.reshape((b, n_seg, seg) + tuple(t.shape[2:]))
        return F.pad(t, (0, 0) * (t.dim() - 3) + (0, seg_r - seg), value=fill)
    shape6 = (b, n_seg, seg_r // r, r, h, dh)  # position in segment = i * r + j
    q, k, v = (to_segments(t, 0).reshape(shape6) for t in (q, k, v))
    valid = to_segments(valid, False).reshape(shape6[:4])
    group = math.ceil(h / r)
    out = q.new_zeros(shape6, dtype=torch.float32)
    lse = q.new_full(shape6[:5], -math.inf, dtype=torch.float32)
    for j in range(math.ceil(h / group)):
        hs = slice(j * group, min((j + 1) * group, h))
        o_j, l_j = _attend(q[:, :, :, j, hs], k[:, :, :, j, hs], v[:, :, :, j, hs], valid[:, :, :, j])
        out[:, :, :, j, hs] = o_j
        lse[:, :, :, j, hs] = l_j
    out = out.reshape(b, n_seg, seg_r, h, dh)[:, :, :seg].reshape(b, n_seg * seg, h, dh)
    lse = lse.reshape(b, n_seg, seg_r, h)[:, :, :seg].reshape(b, n_seg * seg, h)
    return out[:, :n], lse[:, :n]


def merge_branches(outs, lses):
    """Σ_b softmax_b(detached lse_b) · out_b; a branch with lse -inf at a position weighs 0."""
    lse = torch.stack(lses).detach()  # (nb,B,N,H)
    top = lse.max(0).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.where(torch.isfinite(lse), torch.exp(lse - top), torch.zeros_like(lse))
    den = e.sum(0)
    w = e / torch.where(den > 0, den, torch.ones_like(den))
    return (w[..., None] * torch.stack(outs)).sum(0)


def dilated_attention(q, k, v, valid, segments, dilations):
    branches = [dilated_branch(q, k, v, valid, w, r) for w, r in zip(segments, dilations)]
    return merge_branches([o for o, _ in branches], [l for _, l in branches])


class DropPath(nn.Module):
    """Stochastic depth: zeroes the whole residual branch of a sample with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p <= 0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p
        return torch.where(keep, x / (1 - self.p), torch.zeros((), device=x.device, dtype=x.dtype))


class DilatedSelfAttention(nn.Module):
    def __init__(self, width, heads, segments, dilations, eps):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.inner_ln = nn.LayerNorm(width, eps=eps)  # sub-LN
        self.out_proj = nn.Linear(width, width)
        self.heads, self.segments, self.dilations = heads, tuple(segments), tuple(dilations)

    def forward(self, x, valid):
        b, n, w = x.shape
        dh = w // self.heads
        q = self.q_proj(x).reshape(b, n, self.heads, dh) * dh ** -0.5
        k = self.k_proj(x).reshape(b, n, self.heads, dh)
        v = self.v_proj(x).reshape(b, n, self.heads, dh)
        out = dilated_attention(q, k, v, valid, self.segments, self.dilations).to(x.dtype)
        return self.out_proj(self.inner_ln(out.reshape(b, n, w)))


class LongNetLayer(nn.Module):
    def __init__(self, cfg, drop_path: float):
        super().__init__()
        w, f, eps = cfg.width, cfg.ffn_dim, cfg.layer_norm_eps
        self.attn_ln = nn.LayerNorm(w, eps=eps)
        self.attn = DilatedSelfAttention(w, cfg.num_heads, cfg.segment_lengths, cfg.dilations, eps)
        self.ffn_ln = nn.LayerNorm(w, eps=eps)
        self.fc1 = nn.Linear(w, f)
        self.ffn_inner_ln = nn.LayerNorm(f, eps=eps)  # sub-LN
        self.fc2 = nn.Linear(f, w)
        self.drop = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, valid):
        x = x + self.drop_path(self.drop(self.attn(self.attn_ln(x), valid)))
        h = self.drop(F.gelu(self.fc1(self.ffn_ln(x)), approximate="none"))
        return x + self.drop_path(self.drop(self.fc2(self.ffn_inner_ln(h))))


class LongNet(nn.Module):
    """(B,N,feature_dim) features + validity (B,N) → (B,N,width); invalid rows are 0."""

    def __init__(self, cfg):
        super().__init__()
        self.in_proj = None if cfg.feature_dim == cfg.width else nn.Linear(cfg.feature_dim, cfg.width)
        rates = [cfg.drop_path * i / max(cfg.num_layers - 1, 1) for i in range(cfg.num_layers)]
        self.layers = nn.ModuleList([LongNetLayer(cfg, r) for r in rates])
        self.final_ln = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, features, valid):
        x = features
        if self.in_proj is not None:
            x = self.in_proj(x)
        for layer in self.layers:
            x = layer(x, valid)
        x = self.final_ln(x)
        return torch.where(valid[..., None], x, torch.zeros((), device=x.device, dtype=x.dtype))


class Projector(nn.Module):
    """Linear(width → H), exact GELU, Linear(H → H), with biases."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_out)
        self.fc2 = nn.Linear(d_out, d_out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="none"))
