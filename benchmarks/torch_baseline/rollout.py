"""The reference's rollout: HF `generate` with each prompt repeated G times (prompt-major,
as `num_return_sequences` would), every copy prefilled on its own, and slide tokens given
as `inputs_embeds` (the published reference feeds no slide at all — SPEC §7 defect 1 —
which would make its prompts 4096 tokens shorter; we compare equal work).
HF derives RoPE positions from the attention mask (cumsum - 1), as `PathVLM` does.
"""
from __future__ import annotations

import torch

from benchmarks.torch_baseline.sft import autocast


@torch.no_grad()
def reference_rollout(model, ids, text_valid, features, patch_valid, *, group_size: int, max_new_tokens: int,
                      greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      eos_id: int = -1, pad_id: int = 0, compute_dtype: str = "float32"):
    """Returns generated tokens (B·G, ≤ max_new_tokens), rows prompt-major. eos_id < 0: no EOS."""
    x, valid = model.embed_inputs(ids, text_valid, features, patch_valid)
    x, valid = x.repeat_interleave(group_size, 0), valid.repeat_interleave(group_size, 0)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    with autocast(x.device.type, compute_dtype):
        return model.llm.generate(inputs_embeds=x, attention_mask=valid.long(), max_new_tokens=max_new_tokens,
                                  min_new_tokens=0, do_sample=not greedy, eos_token_id=eos_id if eos_id >= 0 else None,
                                  pad_token_id=pad_id, **sampling)
