"""Plain-Python twins of the device rewards, on decoded text (regex, Aho-Corasick).

Same rules as `rewards.py` (its docstring states them), written independently: the tests
compare the two, and `bench_rewards` times this one as the reference-style baseline
(decode, regex, Aho-Corasick in a Python loop per completion).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import ahocorasick
import numpy as np

TAGS = ("observe", "think", "answer")


def decode_completion(tok, ids_t, mask_t) -> str:
    """The text of the valid (mask 1) completion tokens, special tokens kept."""
    ids = [int(i) for i, m in zip(ids_t, mask_t) if m]
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def format_reward_text(text: str, eos_text: str = "<|im_end|>", pad_text: str = "<|endoftext|>") -> float:
    tags = [f"<{t}>" for t in TAGS] + [f"</{t}>" for t in TAGS]
    if any(text.count(t) != 1 for t in tags):
        return 0.0
    tail = f"(?:\\s|{re.escape(eos_text)}|{re.escape(pad_text)})*"
    pat = r"\s*<observe>.*</observe>\s*<think>.*</think>\s*<answer>.*</answer>" + tail
    return 1.0 if re.fullmatch(pat, text, flags=re.DOTALL) else 0.0


def span_text(text: str, tag: str) -> Optional[str]:
    m = re.search(f"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    return m.group(1) if m else None


class TextEntityMatcher:
    """Case variants of each surface in one Aho-Corasick automaton, word-boundary filtered."""

    def __init__(self, surfaces: Sequence[tuple[str, int]]):
        self.automaton = ahocorasick.Automaton()
        words: dict[str, set] = {}
        for s, e in surfaces:
            for v in {s, s.lower(), s[:1].upper() + s[1:]}:
                if v:
                    words.setdefault(v, set()).add(e)
        for w, ents in words.items():
            self.automaton.add_word(w, (w, frozenset(ents)))
        self.empty = not words
        if not self.empty:
            self.automaton.make_automaton()

    def find(self, text: str) -> set[int]:
        found: set[int] = set()
        if self.empty or not text:
            return found
        for end, (w, ents) in self.automaton.iter(text):
            start = end - len(w) + 1
            if start > 0 and w[0].isalnum() and text[start - 1].isalnum():
                continue
            if end + 1 < len(text) and w[-1].isalnum() and text[end + 1].isalnum():
                continue
            found |= ents
        return found


def entities_text(text: str, matcher: TextEntityMatcher) -> set[int]:
    """Entities in the observe span or the think span (each searched on its own)."""
    found: set[int] = set()
    for tag in ("observe", "think"):
        s = span_text(text, tag)
        if s is not None:
            found |= matcher.find(s)
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


def answer_texts(tok, ids_bt, mask_bt) -> list[str]:
    """The stripped `<answer>` span of each completion ("" without one), e.g. for the judge."""
    out = []
    for ids, m in zip(np.asarray(ids_bt), np.asarray(mask_bt)):
        s = span_text(decode_completion(tok, ids, m), "answer")
        out.append(s.strip() if s is not None else "")
    return out


def rewards_text(tok, ids_bt, mask_bt, gt_sets: Sequence[set], sim, references: Sequence[str],
                 matcher: TextEntityMatcher, alpha: float = 0.5, beta: float = 0.5,
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
