"""One SFT step in PyTorch, as the reference trains: AdamW (fp32 master weights), linear
warm-up then cosine (the optax schedule of `pathreasoner_jax.sft.step.make_optimizer`),
global grad-norm clipping, bf16 autocast when the config's compute dtype is bf16.

Trainable parameters mirror `trainable_filter`: LoRA adapters only in the LLM when LoRA
is on and `sft.train_lora_only` (else the whole LLM), the slide encoder and projector
fully, minus the modules in `sft.freeze`.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from benchmarks.torch_baseline.vlm import sft_loss

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: str, compute_dtype: str):
    dt = _DTYPES.get(compute_dtype)
    return torch.autocast(device_type=device, dtype=dt) if dt is not None else nullcontext()


def set_trainable(model, sft_cfg, lora_enabled: bool) -> list:
    frozen = set(sft_cfg.freeze)
    params = []
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        on = top not in frozen
        if on and top == "llm" and lora_enabled and sft_cfg.train_lora_only:
            on = ".lora_" in name
        p.requires_grad_(on)
        if on:
            params.append(p)
    return params


def lr_lambda(total_steps: int, warmup_ratio: float):
    """Factor of the peak lr at step s: linear 0 → 1 over the warm-up, then cosine to 0."""
    warmup = max(1, int(round(warmup_ratio * total_steps))) if warmup_ratio > 0 else 0
    decay = max(total_steps, warmup + 1) - warmup

    def f(s: int) -> float:
        if s < warmup:
            return s / warmup
        return 0.5 * (1 + math.cos(math.pi * min(s - warmup, decay) / decay))
    return f


def make_torch_sft(model, sft_cfg, lora_enabled: bool, total_steps: int, compute_dtype: str = "float32"):
    """Returns `step(batch) -> loss float` (one optimizer step) and the optimizer."""
    params = set_trainable(model, sft_cfg, lora_enabled)
    opt = torch.optim.AdamW(params, lr=sft_cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=sft_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, sft_cfg.warmup_ratio))
    device = next(model.parameters()).device.type

    def step(batch: dict) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(device, compute_dtype):
            s, n = sft_loss(model, batch)
        loss = s / n.clamp(min=1.0)
        loss.backward()
        if sft_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, sft_cfg.grad_clip)
        opt.step()
        sched.step()
        return loss.detach()
    return step, opt


def to_torch_batch(batch: dict, device="cpu") -> dict:
    """numpy batch (as `pathreasoner_jax.sft.loss`) → torch tensors on `device`."""
    import numpy as np
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}
