"""The PyTorch baseline of `pathreasoner bench clip`: open_clip's own `CLIP` (ViT image tower
+ causal text transformer), random init, trained as open_clip's train loop does: `ClipLoss`
(symmetric InfoNCE, one process), AdamW with no decay on gains/biases/logit_scale, betas
(0.9, 0.98), eps 1e-6 (open_clip_train's ViT defaults), logit_scale clamped to [0, ln 100]
after each step, fp32 (no autocast on CPU).

open_clip state-dict layout (what `model.state_dict()` holds, in this order), with W/Lv/Fv
the vision width/layers/mlp dim, G = image_size // patch_size, P the patch size, D/Lt/Ft the
text width/layers/mlp dim, T the context length, V the vocab size, E the embed dim:

    positional_embedding                     (T, D)     text
    text_projection                          (D, E)     used as x @ text_projection (no bias)
    logit_scale                              ()         log scale, init ln(1/0.07); forward returns .exp()
    visual.class_embedding                   (W,)
    visual.positional_embedding              (G*G + 1, W)   class token first
    visual.proj                              (W, E)     used as x @ proj (no bias)
    visual.conv1.weight                      (W, 3, P, P)   OIHW, stride P, no bias; pixels NCHW
    visual.ln_pre.{weight,bias}              (W,)
    visual.transformer.resblocks.{i}.…       i < Lv, block keys below with width W, mlp Fv
    visual.ln_post.{weight,bias}             (W,)
    transformer.resblocks.{i}.…              i < Lt, block keys below with width D, mlp Ft
    token_embedding.weight                   (V, D)
    ln_final.{weight,bias}                   (D,)

  block keys (X = width, F = mlp dim); Linear weights are torch's (out, in):
    ln_1.{weight,bias} (X,); attn.in_proj_weight (3X, X) rows [q; k; v]; attn.in_proj_bias (3X,);
    attn.out_proj.weight (X, X); attn.out_proj.bias (X,); ln_2.{weight,bias} (X,);
    mlp.c_fc.weight (F, X); mlp.c_fc.bias (F,); mlp.c_proj.weight (X, F); mlp.c_proj.bias (X,)

  not in the state dict: `attn_mask` (T, T), a non-persistent buffer: additive causal mask,
  -inf above the diagonal, 0 elsewhere.

Computation: block = pre-LN, x + attn(ln_1(x)), then x + mlp(ln_2(x)) (layer scale off);
LayerNorm eps 1e-5; vision heads = W // head_width (we pass head_width = W // vision_heads);
mlp activation nn.GELU (exact erf) by default, QuickGELU x·σ(1.702x) only with
quick_gelu=True (OpenAI's pretrained weights use QuickGELU). Image: conv1 → flatten patches
→ prepend class_embedding → + positional_embedding → ln_pre → blocks → ln_post → token 0 →
@ proj. Text: token_embedding + positional_embedding → blocks (causal) → ln_final → pooled
at `tokens.argmax(-1)` (the first position holding the largest id: open_clip's default
'argmax' pooling assumes the end-of-text token has the highest id in the vocabulary) →
@ text_projection. Both embeddings are L2-normalised before the logits.

Importing this module works around PyPI's torchvision being a CUDA build (see
`benchmarks/torch_baseline/torchvision_cpu.py`).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import numpy as np
import torch

from benchmarks.torch_baseline.torchvision_cpu import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

import open_clip  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402
from open_clip.model import CLIPTextCfg, CLIPVisionCfg  # noqa: E402


def _mlp_ratio(mlp_dim: int, width: int) -> float:
    # open_clip builds int(width * mlp_ratio): nudge the ratio where float rounding would
    # truncate mlp_dim to mlp_dim - 1
    r = mlp_dim / width
    return r if int(width * r) == mlp_dim else (mlp_dim + 0.5) / width


def build_openclip(cfg: dict) -> open_clip.CLIP:
    """open_clip `CLIP` from a plain dict {image_size, patch_size, vision_width, vision_layers,
    vision_heads, vision_mlp_dim, vocab_size, context_length, text_width, text_layers,
    text_heads, text_mlp_dim, embed_dim, quick_gelu}; random init, nothing downloaded."""
    vw, tw = int(cfg["vision_width"]), int(cfg["text_width"])
    if vw % cfg["vision_heads"] or tw % cfg["text_heads"]:
        raise ValueError("vision_width / text_width must be divisible by their head counts")
    if cfg["image_size"] % cfg["patch_size"]:
        raise ValueError("image_size must be a multiple of patch_size")
    vision = CLIPVisionCfg(
        layers=int(cfg["vision_layers"]), width=vw, head_width=vw // int(cfg["vision_heads"]),
        mlp_ratio=_mlp_ratio(int(cfg["vision_mlp_dim"]), vw),
        patch_size=int(cfg["patch_size"]), image_size=int(cfg["image_size"]))
    text = CLIPTextCfg(
        context_length=int(cfg["context_length"]), vocab_size=int(cfg["vocab_size"]), width=tw,
        heads=int(cfg["text_heads"]), layers=int(cfg["text_layers"]),
        mlp_ratio=_mlp_ratio(int(cfg["text_mlp_dim"]), tw))
    return open_clip.CLIP(int(cfg["embed_dim"]), vision_cfg=vision, text_cfg=text,
                          quick_gelu=bool(cfg.get("quick_gelu", False)))


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """`model.state_dict()` as float numpy arrays (the layout in the module docstring)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_state(model: torch.nn.Module, state: dict[str, np.ndarray]) -> torch.nn.Module:
    """Loads an open_clip-layout state dict of numpy arrays, strictly: a missing, extra or
    mis-shaped key raises. Values are cast to each parameter's dtype. Returns `model`."""
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True)
    return model


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # open_clip_train/main.py's `exclude`: gains, biases, 1-d params and logit_scale
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def train_step_fn(model: open_clip.CLIP, lr: float, weight_decay: float, betas=(0.9, 0.98),
                  eps: float = 1e-6) -> Callable:
    """`step(pixels (B, 3, H, W) float, tokens (B, T) int) -> loss float`: one open_clip
    training step (forward, ClipLoss, backward, AdamW, logit_scale clamp). Inputs may be
    numpy or torch; they go to the model's device. `step.optimizer` is the AdamW."""
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in named if _no_decay(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not _no_decay(n, p)], "weight_decay": weight_decay}],
        lr=lr, betas=tuple(betas), eps=eps)
    loss_fn = ClipLoss()
    device = next(model.parameters()).device

    def step(pixels, tokens) -> float:
        pixels = torch.as_tensor(pixels, dtype=torch.float32, device=device)
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=device)
        opt.zero_grad(set_to_none=True)
        image_features, text_features, logit_scale = model(pixels, tokens)
        loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return float(loss.detach())  # float() waits for the device, so timings are complete

    step.optimizer = opt
    return step


def time_steps(step: Callable, batches: Iterable, warmup: int = 2, repeats: int = 5) -> list[float]:
    """Runs `warmup` untimed then `repeats` timed `step(pixels, tokens)` calls, cycling over
    `batches` (a sequence of (pixels, tokens)); returns the seconds of each timed call."""
    batches = list(batches)
    if not batches:
        raise ValueError("time_steps needs at least one batch")
    for i in range(warmup):
        step(*batches[i % len(batches)])
    times = []
    for i in range(repeats):
        pixels, tokens = batches[(warmup + i) % len(batches)]
        t0 = time.perf_counter()
        step(pixels, tokens)
        times.append(time.perf_counter() - t0)
    return times
