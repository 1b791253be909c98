"""Reasoning paths between a finding and a diagnosis (SPEC §4, after MedReason).

All shortest paths in the undirected view of the KG (relations may be read against
their direction: "X is characteristic of D" links D back to X), at most `max_paths`
(50) per pair; ranked by a hub penalty, Σ log(1 + degree) over the intermediate nodes,
so paths through specific concepts beat paths through hubs (plus a small penalty for
passing through an anatomy/stage node); the top `top_k` (3) are kept. Each hop keeps every relation between its two nodes (parallel relations and
both directions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from data_prep.kg import KnowledgeGraph


@dataclass(frozen=True)
class KGPath:
    """nodes: node ids from the finding to the diagnosis; hops[i]: the relations between
    nodes[i] and nodes[i+1] as (label, forward) with forward = nodes[i] → nodes[i+1]."""
    nodes: tuple[str, ...]
    hops: tuple[tuple[tuple[str, bool], ...], ...]
    penalty: float

    def names(self, kg: KnowledgeGraph) -> list[str]:
        return [kg.name(n) for n in self.nodes]


CONTEXT_TYPES = ("anatomy", "stage")


def hub_penalty(kg, nodes) -> float:
    return float(sum(math.log1p(kg.degree(n)) for n in nodes[1:-1]))


def path_score(kg, nodes) -> float:
    """Hub penalty plus 0.5 per intermediate anatomy/stage node (ours): a path through a
    shared site ("X is located in the colon") explains less than one through a concept."""
    return hub_penalty(kg, nodes) + 0.5 * sum(kg.type(n) in CONTEXT_TYPES for n in nodes[1:-1])


def find_paths(kg: KnowledgeGraph, source, target, max_paths: int = 50, top_k: int = 3) -> list[KGPath]:
    """Top-k ranked shortest paths from source to target (node ids); [] when unconnected.
    The search is bounded by the graph (one breadth-first search) and by `max_paths`
    (`KnowledgeGraph.shortest_paths` / `CompactKG.shortest_paths`)."""
    raw = kg.shortest_paths(source, target, max_paths)
    paths = []
    for nodes in raw:
        hops = tuple(tuple(kg.relations_between(u, v)) for u, v in zip(nodes, nodes[1:]))
        paths.append(KGPath(tuple(nodes), hops, path_score(kg, nodes)))
    # ties broken by names so the choice does not depend on graph insertion order
    paths.sort(key=lambda p: (p.penalty, [kg.name(n) for n in p.nodes]))
    return paths[:top_k]


_PHRASES = {"indicates": "indicates", "characteristic_of": "is characteristic of",
            "associated_with": "is associated with", "part_of": "is part of", "located_in": "is located in",
            "is_a": "is a type of", "subclass_of": "is a type of", "staged_as": "is staged as",
            "instance_of": "is an instance of"}


def _plural(name: str) -> bool:
    last = name.split()[-1].lower() if name.split() else ""
    return (last.endswith("s") and not last.endswith(("ss", "sis", "us"))) or last.endswith("i")  # nuclei


def relation_phrase(label: str, plural: bool = False) -> str:
    """Verb phrase for a relation label; agrees with a plural subject ("pearls indicate")."""
    p = _PHRASES.get(label, label.replace("_", " "))
    if plural:
        if p.startswith("is "):
            p = "are " + p[3:]
        elif p == "indicates":
            p = "indicate"
    return p


def verbalize(kg: KnowledgeGraph, path: KGPath, relation_choice: int = 0) -> str:
    """One clause list per path, entity names kept verbatim (lower case as in the KG, so
    they can be matched again): "keratin pearls indicate keratinization; keratinization
    is characteristic of squamous cell carcinoma". Each hop states a relation in its true
    direction; `relation_choice` rotates among parallel relations."""
    clauses = []
    for (u, v), rels in zip(zip(path.nodes, path.nodes[1:]), path.hops):
        label, fwd = rels[relation_choice % len(rels)] if rels else ("related_to", True)
        a, b = (u, v) if fwd else (v, u)
        clauses.append(f"{kg.name(a)} {relation_phrase(label, _plural(kg.name(a)))} {kg.name(b)}")
    return "; ".join(clauses)
