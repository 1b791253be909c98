"""Whole-word surface matching with one Aho-Corasick automaton: the project's one matcher,
used by data-prep entity linking, evaluation's entity metrics and report, the prior's
entity weights and the Python twin of the entity reward.

Rules, written once:
- Whole words: an occurrence may not continue a word on either side. If the surface's
  first character is alphanumeric (`str.isalnum`), the character before the occurrence
  must not be; likewise the surface's last character and the character after. Text
  edges are boundaries. (The device entity reward applies the same test to tokens.)
- Case: `case_insensitive=True` folds the text and the surfaces one character per
  character (so offsets stay valid in the original text; `str.lower` can lengthen a
  few characters, e.g. 'İ') and collapses the surfaces' internal whitespace;
  `case_insensitive=False` matches exactly as given (callers add the variants they want).
- Overlaps: `overlapping=False` keeps leftmost-longest, non-overlapping matches ("lung
  adenocarcinoma" wins over the "adenocarcinoma" inside it, and every character belongs
  to at most one match); `overlapping=True` reports every occurrence.
- A surface given twice keeps its first value (callers resolve conflicts before).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import ahocorasick


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    surface: str  # the matched key (normalised when case-insensitive)
    value: Any


def fold_case(text: str) -> str:
    """Lower case, one character per character (offsets into `text` stay valid)."""
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def normalize_surface(surface: str) -> str:
    """The case-insensitive key of a surface: folded, internal whitespace collapsed."""
    return " ".join(fold_case(str(surface)).split())


class WholeWordMatcher:
    """`items`: (surface, value) pairs; `find(text)` → the `Match`es in text order."""

    def __init__(self, items: Iterable[tuple[str, Any]], *, case_insensitive: bool = True,
                 overlapping: bool = False):
        self.case_insensitive = case_insensitive
        self.overlapping = overlapping
        self._automaton = ahocorasick.Automaton()
        self.values: dict[str, Any] = {}
        for surface, value in items:
            key = normalize_surface(surface) if case_insensitive else str(surface)
            if key and key not in self.values:
                self.values[key] = value
                self._automaton.add_word(key, key)
        if self.values:
            self._automaton.make_automaton()

    def __len__(self) -> int:
        return len(self.values)

    def find(self, text: str) -> list[Match]:
        if not self.values or not text:
            return []
        hay = fold_case(text) if self.case_insensitive else text
        found = []
        for end_idx, key in self._automaton.iter(hay):
            start, end = end_idx - len(key) + 1, end_idx + 1
            if start > 0 and key[0].isalnum() and hay[start - 1].isalnum():
                continue
            if end < len(hay) and key[-1].isalnum() and hay[end].isalnum():
                continue
            found.append((start, -(end - start), end, key))
        found.sort()
        out, last_end = [], 0
        for start, _, end, key in found:
            if self.overlapping or start >= last_end:
                out.append(Match(start, end, key, self.values[key]))
                last_end = end
        return out
