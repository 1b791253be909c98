"""KG entity linking for evaluation and the report: an Aho-Corasick automaton over entity
names and synonyms, matched case-insensitively on whole words, mapped to canonical names.

A lexicon is a list of entries `{"name": str, "type": str, "synonyms": [str, ...]}`
(`type` and `synonyms` optional). Overlapping matches are resolved leftmost-longest, so
"lung adenocarcinoma" wins over the "adenocarcinoma" inside it, and each character of the
text belongs to at most one entity mention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import ahocorasick


@dataclass(frozen=True)
class EntityMention:
    """One linked mention: text[start:end] refers to the KG entity `name` of `type`."""
    start: int
    end: int
    name: str
    type: str


def _lower_same_length(text: str) -> str:
    # str.lower() can change the length of a few characters (e.g. 'İ' → 'i̇'); keeping
    # one character per character keeps match offsets valid in the original text.
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


class EntityLexicon:
    """Case-insensitive whole-word matcher: surface forms (names + synonyms) → canonical name."""

    def __init__(self, entries: Iterable[Mapping]):
        self.types: dict[str, str] = {}
        self._automaton = ahocorasick.Automaton()
        n_keys = 0
        for entry in entries:
            name = str(entry["name"]).strip()
            if not name:
                continue
            self.types.setdefault(name, str(entry.get("type") or ""))
            for surface in [name, *(entry.get("synonyms") or [])]:
                key = " ".join(_lower_same_length(str(surface)).split())
                # First entry wins when two entities share a surface form: deterministic.
                if key and key not in self._automaton:
                    self._automaton.add_word(key, (len(key), name))
                    n_keys += 1
        if n_keys:
            self._automaton.make_automaton()
        self._empty = n_keys == 0

    @property
    def names(self) -> list[str]:
        return list(self.types)

    def find(self, text: str) -> list[EntityMention]:
        """All non-overlapping whole-word mentions in `text`, in text order."""
        if self._empty or not text:
            return []
        low = _lower_same_length(text)
        candidates = []
        for end_idx, (length, name) in self._automaton.iter(low):
            start, end = end_idx - length + 1, end_idx + 1
            if start > 0 and _is_word_char(low[start - 1]):
                continue
            if end < len(low) and _is_word_char(low[end]):
                continue
            candidates.append((start, -(end - start), end, name))
        candidates.sort()
        mentions, last_end = [], 0
        for start, _, end, name in candidates:
            if start >= last_end:
                mentions.append(EntityMention(start, end, name, self.types.get(name, "")))
                last_end = end
        return mentions

    def entities(self, text: str) -> set[str]:
        """The set of canonical entity names mentioned in `text`."""
        return {m.name for m in self.find(text)}


def as_lexicon(lexicon) -> EntityLexicon:
    """Accept an `EntityLexicon`, a list of entry dicts, or None (→ an empty lexicon)."""
    if isinstance(lexicon, EntityLexicon):
        return lexicon
    return EntityLexicon(lexicon or [])
