"""Format-tag spans of a completion (`<observe>…</observe>`, `<think>…</think>`,
`<answer>…</answer>`) and the end-of-turn tokens that may trail it.

A span is the text strictly between the first `<X>` and the first `</X>` after it;
`tag_span` returns it as written (the reward twins tokenize it), `extract_span` stripped.
"""
from __future__ import annotations

import re
from typing import Optional

from pathreasoner_jax.tokenizer import FORMAT_TAGS

TAGS = ("observe", "think", "answer")
# EOS (<|im_end|>) and pad (<|endoftext|>), as the GRPO format reward allows after </answer>.
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_END_TOKENS_RE = re.compile(r"(?:\s*(?:" + "|".join(re.escape(t) for t in END_TOKENS) + r"))+\s*$")
_TAG_RE = re.compile("|".join(re.escape(t) for t in FORMAT_TAGS))
_SPAN_RE = {t: re.compile(f"<{t}>(.*?)</{t}>", re.DOTALL) for t in TAGS}


def strip_end_tokens(text: str) -> str:
    """Drop trailing end-of-turn tokens (and the whitespace around them)."""
    return _END_TOKENS_RE.sub("", text)


def strip_tags(text: str) -> str:
    """The text with every format tag replaced by a space, whitespace collapsed."""
    return " ".join(_TAG_RE.sub(" ", text).split())


def tag_span(text: str, tag: str) -> Optional[str]:
    """Content of the first complete `<tag>…</tag>` span, as written; None without one."""
    m = _SPAN_RE[tag].search(text)
    return m.group(1) if m else None


def extract_span(text: str, tag: str) -> Optional[str]:
    """Stripped content of the first complete `<tag>…</tag>` span, or None."""
    s = tag_span(text, tag)
    return s.strip() if s is not None else None


def extract_answer(text: str) -> str:
    """The answer of a completion: the first `<answer>…</answer>` span; for a generation cut
    off inside the span, the text after the last `<answer>`; with no `<answer>` tag at all,
    the whole text with any tags removed (plain reference answers pass through unchanged)."""
    text = strip_end_tokens(text)
    span = extract_span(text, "answer")
    if span is not None:
        return span
    if "<answer>" in text:
        return _TAG_RE.sub(" ", text.rsplit("<answer>", 1)[1]).strip()
    return strip_tags(text)


def reasoning_text(text: str) -> str:
    """The observe + think spans (where entities are counted, as the entity reward does);
    the whole text without tags when neither span is present."""
    text = strip_end_tokens(text)
    spans = [s for s in (extract_span(text, "observe"), extract_span(text, "think")) if s is not None]
    return "\n".join(spans) if spans else strip_tags(text)


def full_text(text: str) -> str:
    """The completion with tags and end tokens removed."""
    return strip_tags(strip_end_tokens(text))
