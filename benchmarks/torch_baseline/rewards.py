"""The reference's reward loop, and the plain-Python twin of our device rewards: per
completion decode the ids, then regex (format, spans), whole-word matching (entities) and
a Python LCS (ROUGE-L) on the text.

Same rules as `pathreasoner_jax.grpo.rewards` (its docstring states them), written
independently of that device code: the tests compare the two on hundreds of random
completions, and `pathreasoner bench rewards` times this loop as the baseline. It lives
in the benchmarks wing, not in the library, because nothing in training uses it.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from pathreasoner_jax.text.decode import completion_text as decode_completion
from pathreasoner_jax.text.matcher import WholeWordMatcher
from pathreasoner_jax.text.spans import TAGS, tag_span as span_text

def format_reward_text(text: str, eos_text: str = "<|im_end|>", pad_text: str = "<|endoftext|>") -> float:
    tags = [f"<{t}>" for t in TAGS] + [f"</{t}>" for t in TAGS]
    if any(text.count(t) != 1 for t in tags):
        return 0.0
    tail = f"(?:\\s|{re.escape(eos_text)}|{re.escape(pad_text)})*"
    pat = r"\s*<observe>.*</observe>\s*<think>.*</think>\s*<answer>.*</answer>" + tail
    return 1.0 if re.fullmatch(pat, text, flags=re.DOTALL) else 0.0


def entity_matcher(surfaces: Sequence[tuple[str, int]]) -> WholeWordMatcher:
    """The device reward's matching on text: each surface in three case variants (as
    written, lower-case, first letter upper-case), matched case-sensitively, every
    occurrence (nested mentions count); a variant shared by entities names all of them."""
    words: dict[str, set] = {}
    for s, e in surfaces:
        for v in {s, s.lower(), s[:1].upper() + s[1:]}:
            if v:
                words.setdefault(v, set()).add(e)
    return WholeWordMatcher(((w, frozenset(ents)) for w, ents in words.items()), case_insensitive=False,
                            overlapping=True)


def entities_text(text: str, matcher: WholeWordMatcher) -> set[int]:
    """Entities in the observe span or the think span (each searched on its own)."""
    found: set[int] = set()
    for tag in ("observe", "think"):
        s = span_text(text, tag)
        if s is not None:
            for m in matcher.find(s):
                found |= m.value
    return found


def entity_dice_text(pred: set, gt: set, sim, beta: float = 0.5) -> float:
    if not pred and not gt:
        return 0.0
    soft = 0.0
    for e in pred - gt:
        soft += max([float(sim[e][g]) for g in gt] + [0.0])
    return min(1.0, 2.0 * (len(pred & gt) + beta * soft) / (len(pred) + len(gt)))


def _content_ids(tok, text: str) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    return [i for i in ids if not tok.decode([i], clean_up_tokenization_spaces=False).isspace()]


def lcs_len(a: Sequence[int], b: Sequence[int]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_text(text: str, reference: str, tok) -> float:
    """ROUGE-L F1 over the token ids of the answer span vs the reference, no whitespace ids."""
    ans = span_text(text, "answer")
    if ans is None:
        return 0.0
    a, r = _content_ids(tok, ans), _content_ids(tok, reference)
    lcs = lcs_len(a, r)
    return 2.0 * lcs / (len(a) + len(r)) if lcs else 0.0


def rewards_text(tok, ids_bt, mask_bt, gt_sets: Sequence[set], sim, references: Sequence[str],
                 matcher: WholeWordMatcher, alpha: float = 0.5, beta: float = 0.5,
                 eos_text: str = "<|im_end|>", pad_text: Optional[str] = None) -> dict:
    """The Python-loop twin of `rewards.compute_rewards` (semantic = rouge) → dict of lists."""
    eos, pad = eos_text, pad_text or tok.pad_token or "<|endoftext|>"
    out = {"format": [], "entity": [], "semantic": [], "total": []}
    for ids, m, gt, ref in zip(np.asarray(ids_bt), np.asarray(mask_bt), gt_sets, references):
        text = decode_completion(tok, ids, m)
        f = format_reward_text(text, eos, pad)
        e = entity_dice_text(entities_text(text, matcher), set(gt), sim, beta)
        s = rouge_l_text(text, ref, tok)
        for k, v in zip(("format", "entity", "semantic", "total"), (f, e, s, f + s + alpha * e)):
            out[k].append(v)
    return out
