"""Entity linking from report text to KG nodes (SPEC §4).

1. exact and synonym matches with the project's whole-word matcher over every name and
   synonym (`pathreasoner_jax.text.matcher`: case-insensitive, leftmost-longest, no
   overlaps; its docstring states the rules);
2. fuzzy matches on the words not covered by step 1: word n-grams are compared with
   lexicon entries that share character trigrams (difflib ratio ≥ threshold), so
   misspellings ("pleomorphsim") still link without scanning the whole lexicon.
Each mention carries the entity's type and whether it is negated ("no X", "without X",
"negative for X" earlier in the same sentence), so negated findings are not used as
evidence.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from difflib import SequenceMatcher

from data_prep.kg import KnowledgeGraph
from pathreasoner_jax.text.matcher import WholeWordMatcher, fold_case, normalize_surface

TYPE_PRIORITY = ("diagnosis", "finding", "anatomy", "stage", "concept")
_NEG = re.compile(r"\b(no|not|without|negative for|absence of|absent|free of|nor|rather than|instead of)\b")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-']*")


@dataclass(frozen=True)
class Mention:
    node: str  # KG node id
    name: str  # canonical name
    type: str
    start: int
    end: int
    surface: str
    score: float = 1.0  # 1 exact/synonym; fuzzy ratio otherwise
    negated: bool = False


def _trigrams(s: str) -> set[str]:
    s = f"  {s} "
    return {s[i:i + 3] for i in range(len(s) - 2)}


class EntityLinker:
    def __init__(self, kg: KnowledgeGraph, fuzzy_threshold: float = 0.88, min_fuzzy_len: int = 5):
        self.kg = kg
        self.fuzzy_threshold = fuzzy_threshold
        self.min_fuzzy_len = min_fuzzy_len
        rank = {t: i for i, t in enumerate(TYPE_PRIORITY)}
        self.surfaces: dict[str, str] = {}  # lower-case surface → node
        for node in kg.nodes():
            for s in [kg.name(node), *kg.synonyms(node)]:
                key = normalize_surface(s)
                old = self.surfaces.get(key)
                # a surface shared by two nodes goes to the more specific type (diagnosis first)
                if key and (old is None or rank.get(kg.type(node), 99) < rank.get(kg.type(old), 99)):
                    self.surfaces[key] = node
        self.matcher = WholeWordMatcher(self.surfaces.items())
        self.max_words = max((len(k.split()) for k in self.surfaces), default=1)
        self.trigram_index: dict[str, list[str]] = defaultdict(list)
        for key in self.surfaces:
            if len(key) >= min_fuzzy_len:
                for tg in _trigrams(key):
                    self.trigram_index[tg].append(key)

    def link(self, text: str) -> list[Mention]:
        """Mentions in text order."""
        low = fold_case(text)
        found = self._exact(low)
        covered = [False] * len(low)
        for m in found:
            covered[m[0]:m[1]] = [True] * (m[1] - m[0])
        found += self._fuzzy(low, covered)
        found.sort()
        return [Mention(node, self.kg.name(node), self.kg.type(node), s, e, text[s:e], score,
                        self._negated(low, s)) for s, e, node, score in found]

    def _exact(self, low: str) -> list[tuple[int, int, str, float]]:
        return [(m.start, m.end, m.value, 1.0) for m in self.matcher.find(low)]

    def _fuzzy(self, low: str, covered: list[bool]) -> list[tuple[int, int, str, float]]:
        if self.fuzzy_threshold >= 1.0 or not self.trigram_index:
            return []
        words = [(m.start(), m.end()) for m in _WORD.finditer(low) if not any(covered[m.start():m.end()])]
        cands = []
        for i in range(len(words)):
            for n in range(1, self.max_words + 1):
                if i + n > len(words):
                    break
                s, e = words[i][0], words[i + n - 1][1]
                if any(covered[s:e]) or re.search(r"[.;:]", low[s:e]):
                    break  # do not cross exact matches or sentence ends
                span = " ".join(low[s:e].split())
                if len(span) < self.min_fuzzy_len:
                    continue
                best = self._best_fuzzy(span)
                if best:
                    cands.append((best[1], e - s, s, e, best[0]))
        out, taken = [], [False] * len(low)
        for score, _, s, e, key in sorted(cands, key=lambda c: (-c[0], -c[1], c[2])):
            if not any(taken[s:e]):
                taken[s:e] = [True] * (e - s)
                out.append((s, e, self.surfaces[key], round(score, 4)))
        return out

    def _best_fuzzy(self, span: str):
        tgs = _trigrams(span)
        counts: dict[str, int] = defaultdict(int)
        for tg in tgs:
            for key in self.trigram_index.get(tg, ()):
                counts[key] += 1
        best = None
        for key, c in counts.items():
            if c < 0.5 * len(tgs) or abs(len(key) - len(span)) > 0.25 * len(key):
                continue
            r = SequenceMatcher(None, span, key).ratio()
            if r >= self.fuzzy_threshold and (best is None or r > best[1] or (r == best[1] and key < best[0])):
                best = (key, r)
        return best

    @staticmethod
    def _negated(low: str, start: int) -> bool:
        sent_start = max(low.rfind(ch, 0, start) for ch in ".;\n") + 1
        window = low[sent_start:start]
        m = None
        for m in _NEG.finditer(window):
            pass
        # "no X but Y": a contrast word after the cue ends its scope
        return m is not None and not re.search(r"\b(but|however|although|while)\b", window[m.end():])
