"""Completion ids → text, one way for rewards, the judge, eval and infer: the valid (mask 1)
tokens decoded with special tokens kept (the format tags are special tokens) and no
tokenization-space clean-up, so the text is exactly what the tokens spell."""
from __future__ import annotations

import numpy as np

from pathreasoner_jax.text.spans import END_TOKENS, tag_span


def completion_text(tok, ids_t, mask_t) -> str:
    """The text of one completion's valid tokens, EOS and pad included where valid."""
    ids = [int(i) for i, m in zip(ids_t, mask_t) if m]
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def completion_texts(tok, tokens_bt, mask_bt) -> list[str]:
    """Each completion's text with the tags kept, end-of-turn tokens dropped, stripped."""
    out = []
    for row, m in zip(np.asarray(tokens_bt), np.asarray(mask_bt)):
        text = completion_text(tok, row, m)
        for t in END_TOKENS:
            text = text.replace(t, "")
        out.append(text.strip())
    return out


def answer_texts(tok, tokens_bt, mask_bt) -> list[str]:
    """The stripped `<answer>` span of each completion ("" without one), e.g. for the judge."""
    out = []
    for row, m in zip(np.asarray(tokens_bt), np.asarray(mask_bt)):
        s = tag_span(completion_text(tok, row, m), "answer")
        out.append(s.strip() if s is not None else "")
    return out
