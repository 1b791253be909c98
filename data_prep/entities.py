"""`prep/entities.json`: the KG lexicon the library reads (rewards, metrics) without
importing data_prep.

{"entities": [{"name", "type", "synonyms"}], "similarity": [[i, j, s], ...]} with i < j
(symmetric), s = 0.5 ** d for graph distance d ∈ {1, 2, 3} in the undirected KG (0.5,
0.25, 0.125), and s = 1 for two entries that share a name (synonyms of one entity are one
entry already). Pairs further apart are absent (s = 0).

Why a neighbour scores at most 0.5: adding an entity e ∉ G to a prediction changes the
entity Dice from N/D to (N + 2β·s)/(D + 1), which raises it only while 2β·s exceeds the
current Dice. With β = 0.5 and s ≤ 0.5 that is at most 0.5, so padding an answer with
neighbours of the ground truth lowers an exact answer's Dice of 1 and cannot lift any
answer above 0.5. (The reference's 0.5 ** (d − 1) gave a direct neighbour 1.0, like a
synonym: neighbours never lowered the Dice, and enough of them approached 1.)
Only the corpus entities are BFS sources and each keeps its `max_similar` nearest
neighbours, so the file stays small (`build_entities`).
"""
from __future__ import annotations

from data_prep.kg import KnowledgeGraph
from pathreasoner_jax.core.io import write_json

MAX_DISTANCE = 3


def similarity(d: int) -> float:
    return 0.5 ** d


ANSWER_TYPES = ("diagnosis", "finding")


def build_entities(kg: KnowledgeGraph, corpus_entities: set[str] | None = None, max_full: int = 20000,
                   max_similar: int = 512) -> dict:
    """The lexicon of a KG and its similarities.

    Similarities are needed only around ground-truth entities, which are always corpus
    entities: with `corpus_entities` given, only those are breadth-first sources (each
    keeps its `max_similar` nearest neighbours within MAX_DISTANCE), which is exact for
    the reward and keeps the file small; without, every node is a source. Entities: up
    to `max_full` nodes, every node; a larger graph (PrimeKG) keeps what the reward can
    use — the corpus entities, their neighbours (the soft term) and every diagnosis and
    finding (so naming a wrong one still costs precision) — and leaves the rest (genes,
    drugs, pathways, …) out of the device lexicon."""
    every = list(kg.nodes())
    sources = [n for n in every if kg.name(n) in corpus_entities] if corpus_entities else every
    if len(every) <= max_full or not corpus_entities:
        keep = set(every)
    else:
        keep = set(sources) | {n for n in every if kg.type(n) in ANSWER_TYPES}
    nearest = {}
    for src in sources:
        dist = kg.distances(src, MAX_DISTANCE, limit=max_similar)
        nearest[src] = sorted(((d, kg.name(n), n) for n, d in dist.items() if n != src))[:max_similar]
        keep.update(n for _, _, n in nearest[src])
    nodes = sorted(keep, key=lambda n: (kg.name(n), n))
    index = {n: i for i, n in enumerate(nodes)}
    entities = [{"name": kg.name(n), "type": kg.type(n), "synonyms": list(kg.synonyms(n))} for n in nodes]
    pairs: dict[tuple[int, int], float] = {}
    for src, near in nearest.items():
        i = index[src]
        for d, _, n in near:
            j = index[n]
            key = (min(i, j), max(i, j))
            pairs[key] = max(pairs.get(key, 0.0), similarity(d))
    by_name: dict[str, list[int]] = {}
    for i, e in enumerate(entities):
        by_name.setdefault(e["name"].lower(), []).append(i)
    for ids in by_name.values():
        for a in ids:
            for b in ids:
                if a < b:
                    pairs[(a, b)] = 1.0
    sim = [[i, j, round(s, 6)] for (i, j), s in sorted(pairs.items())]
    return {"entities": entities, "similarity": sim, "max_distance": MAX_DISTANCE,
            "formula": "0.5 ** d", "kg_source": kg.source, "kg_nodes": len(every)}


def write_entities(path: str, kg: KnowledgeGraph, corpus_entities: set[str] | None = None) -> dict:
    data = build_entities(kg, corpus_entities)
    write_json(path, data)
    return data
