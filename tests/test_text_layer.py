"""The shared text layer: whole-word matching rules, tag spans, completion decoding."""
from __future__ import annotations

import numpy as np

from pathreasoner_jax.text.decode import answer_texts, completion_text, completion_texts
from pathreasoner_jax.text.matcher import WholeWordMatcher, fold_case
from pathreasoner_jax.text.spans import extract_span, tag_span


def _found(matcher, text):
    return [(text[m.start:m.end], m.value) for m in matcher.find(text)]


def test_whole_words_only_with_alphanumeric_edges():
    m = WholeWordMatcher([("gland", "G"), ("colon", "C"), ("ER+", "E")])
    text = "glandular semicolon; a gland, the colon. ER+x and ER+ foci"
    # "ER+" ends in '+', so the 'x' after it does not make it part of a longer word
    assert _found(m, text) == [("gland", "G"), ("colon", "C"), ("ER+", "E"), ("ER+", "E")]


def test_case_insensitive_leftmost_longest_without_overlaps():
    m = WholeWordMatcher([("adenocarcinoma", "A"), ("Lung  Adenocarcinoma", "L"), ("carcinoma", "C")])
    text = "LUNG ADENOCARCINOMA next to carcinoma"
    assert _found(m, text) == [("LUNG ADENOCARCINOMA", "L"), ("carcinoma", "C")]


def test_case_sensitive_overlapping_reports_every_occurrence():
    m = WholeWordMatcher([("lobular carcinoma", 1), ("carcinoma", 2), ("Carcinoma", 3)], case_insensitive=False,
                         overlapping=True)
    assert _found(m, "lobular carcinoma; Carcinoma; CARCINOMA") == [
        ("lobular carcinoma", 1), ("carcinoma", 2), ("Carcinoma", 3)]


def test_first_value_wins_and_offsets_survive_case_folding():
    m = WholeWordMatcher([("necrosis", "first"), ("Necrosis", "second")])
    text = "İİ necrosis"  # 'İ'.lower() is two characters; folding keeps one per character
    assert len(fold_case(text)) == len(text)
    assert _found(m, text) == [("necrosis", "first")]


def test_spans_raw_and_stripped():
    text = "<observe> a </observe><think>b</think><answer> c\n</answer>"
    assert tag_span(text, "observe") == " a " and extract_span(text, "observe") == "a"
    assert tag_span(text, "answer") == " c\n" and extract_span(text, "think") == "b"
    assert tag_span("<answer>cut off", "answer") is None


class _Tok:
    """Decodes ids as the characters of a fixed table (an independent stand-in for a tokenizer)."""
    table = {1: "<answer>", 2: " yes", 3: "</answer>", 4: "<|im_end|>", 5: "<|endoftext|>"}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=True):
        assert not skip_special_tokens and not clean_up_tokenization_spaces
        return "".join(self.table[i] for i in ids)


def test_decoding_keeps_tags_and_drops_end_tokens_only_in_display_text():
    ids = np.array([[1, 2, 3, 4, 5], [2, 2, 4, 5, 5]])
    mask = np.array([[1, 1, 1, 1, 0], [1, 0, 1, 0, 0]])
    assert completion_text(_Tok(), ids[0], mask[0]) == "<answer> yes</answer><|im_end|>"
    assert completion_texts(_Tok(), ids, mask) == ["<answer> yes</answer>", "yes"]
    assert answer_texts(_Tok(), ids, mask) == ["yes", ""]
