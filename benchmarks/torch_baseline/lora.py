"""LoRA on nn.Linear, computing what peft's LoRA layer computes:
y = base(x) + scale · B(A(dropout(x))), scale = alpha / r, B zero-initialised, base frozen.
(Written here rather than depending on peft: the baseline only needs the forward/backward.)
"""
from __future__ import annotations

import math

from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.drop = nn.Dropout(dropout)
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_B(self.lora_A(self.drop(x)))


def apply_lora(module: nn.Module, targets, rank: int, alpha: float, dropout: float) -> int:
    """Wraps every nn.Linear whose attribute name is in `targets`; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, rank, alpha, dropout))
                count += 1
    return count
