"""KG entities in evaluation text and the report: entity names and synonyms mapped to
canonical names through the project's whole-word matcher (`text.matcher`: case-insensitive,
leftmost-longest, non-overlapping; its docstring states the rules).

A lexicon is a list of entries `{"name": str, "type": str, "synonyms": [str, ...]}`
(`type` and `synonyms` optional). When two entities share a surface form the first
entry keeps it, so results are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from pathreasoner_jax.text.matcher import WholeWordMatcher


@dataclass(frozen=True)
class EntityMention:
    """One linked mention: text[start:end] refers to the KG entity `name` of `type`."""
    start: int
    end: int
    name: str
    type: str


class EntityLexicon:
    """Surface forms (names + synonyms) → canonical entity names, found in text."""

    def __init__(self, entries: Iterable[Mapping]):
        self.types: dict[str, str] = {}
        items = []
        for entry in entries:
            name = str(entry["name"]).strip()
            if not name:
                continue
            self.types.setdefault(name, str(entry.get("type") or ""))
            items += [(str(s), name) for s in [name, *(entry.get("synonyms") or [])]]
        self._matcher = WholeWordMatcher(items)

    @property
    def names(self) -> list[str]:
        return list(self.types)

    def find(self, text: str) -> list[EntityMention]:
        """All non-overlapping whole-word mentions in `text`, in text order."""
        return [EntityMention(m.start, m.end, m.value, self.types.get(m.value, "")) for m in self._matcher.find(text)]

    def entities(self, text: str) -> set[str]:
        """The set of canonical entity names mentioned in `text`."""
        return {m.name for m in self.find(text)}


def as_lexicon(lexicon) -> EntityLexicon:
    """Accept an `EntityLexicon`, a list of entry dicts, or None (→ an empty lexicon)."""
    if isinstance(lexicon, EntityLexicon):
        return lexicon
    return EntityLexicon(lexicon or [])
