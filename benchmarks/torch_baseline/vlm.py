"""The SFT loss of the PyTorch baseline, on the library's `TorchVLM`
(`pathreasoner_jax.hf.torch_vlm`: HF `Qwen2ForCausalLM` + LongNet + projector, spliced as
`PathVLM` does). Logits come out of HF in the compute dtype and are upcast for the loss
(as the reference's HF `labels` path does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pathreasoner_jax.hf.torch_vlm import TorchVLM


def sft_loss(model: TorchVLM, batch: dict):
    """(Σ w·nll, Σ w) over the batch, batch keys as `pathreasoner_jax.sft.loss.sft_loss`.
    Masked with `where`, not a product: HF may leave NaN in rows of invalid positions."""
    logits, valid = model(batch["ids"], batch["text_valid"], batch.get("features"), batch.get("patch_valid"))
    nll = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten().long(), reduction="none")
    w = batch["loss_weight"] * valid
    return torch.where(w.flatten() > 0, nll * w.flatten(), torch.zeros_like(nll)).sum(), w.sum()
