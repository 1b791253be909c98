"""The reference's reward loop: per completion decode the ids, then regex (format, spans)
and Aho-Corasick (entities) in Python. The twins in `pathreasoner_jax.grpo.rewards_text`
implement exactly that (and are tested against our device rewards), so this reuses them.
"""
from __future__ import annotations


def reference_rewards(tok, ids_bt, mask_bt, gt_sets, sim, references, matcher, alpha=0.5, beta=0.5,
                      eos_text="<|im_end|>"):
    """→ dict of lists format/entity/semantic/total, one value per completion."""
    from pathreasoner_jax.grpo.rewards_text import rewards_text
    return rewards_text(tok, ids_bt, mask_bt, gt_sets, sim, references, matcher, alpha, beta, eos_text)
