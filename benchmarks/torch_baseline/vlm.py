"""The reference-style VLM in PyTorch: HF `Qwen2ForCausalLM` + LongNet + projector.

Splicing is the same as `PathVLM.embed_inputs`: the k-th `<image>` token of a row takes
the k-th projected patch; an image token whose patch is padding is invalid (attention
mask 0); RoPE positions are cumsum(valid) - 1, passed explicitly as `position_ids`.
Logits come out of HF in the compute dtype and are upcast for the loss (as the
reference's HF `labels` path does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_baseline.longnet import LongNet, Projector


def positions(valid_bt: torch.Tensor) -> torch.Tensor:
    return (valid_bt.long().cumsum(1) - 1).clamp(min=0)


class TorchVLM(nn.Module):
    def __init__(self, llm: nn.Module, slide_cfg, image_token_id: int):
        super().__init__()
        self.llm = llm
        self.slide_encoder = LongNet(slide_cfg)
        self.projector = Projector(slide_cfg.width, llm.config.hidden_size)
        self.image_token_id = image_token_id

    def embed_inputs(self, ids, text_valid, features, patch_valid):
        """(B,T) ids/validity + (B,P,F)/(B,P) slide → (x (B,T,H), valid (B,T))."""
        x = self.llm.get_input_embeddings()(ids)
        if features is None:
            return x, text_valid
        is_image = ids == self.image_token_id
        slide = self.projector(self.slide_encoder(features, patch_valid)).to(x.dtype)
        rank = (is_image.long().cumsum(1) - 1).clamp(0, slide.shape[1] - 1)
        picked = torch.gather(slide, 1, rank[..., None].expand(-1, -1, slide.shape[-1]))
        patch_ok = torch.gather(patch_valid, 1, rank)
        x = torch.where(is_image[..., None], picked, x)
        return x, text_valid & (~is_image | patch_ok)

    def forward(self, ids, text_valid, features, patch_valid):
        """Returns (fp32 logits (B,T,V), token validity (B,T))."""
        x, valid = self.embed_inputs(ids, text_valid, features, patch_valid)
        out = self.llm(inputs_embeds=x, attention_mask=valid.long(), position_ids=positions(valid), use_cache=False)
        return out.logits.float(), valid


def sft_loss(model: TorchVLM, batch: dict):
    """(Σ w·nll, Σ w) over the batch, batch keys as `pathreasoner_jax.sft.loss.sft_loss`.
    Masked with `where`, not a product: HF may leave NaN in rows of invalid positions."""
    logits, valid = model(batch["ids"], batch["text_valid"], batch.get("features"), batch.get("patch_valid"))
    nll = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten().long(), reduction="none")
    w = batch["loss_weight"] * valid
    return torch.where(w.flatten() > 0, nll * w.flatten(), torch.zeros_like(nll)).sum(), w.sum()
