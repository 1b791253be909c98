"""The knowledge graph the pathology-graph and OWL loaders produce: a networkx
MultiDiGraph whose nodes are entity ids (attributes name, type, synonyms) and whose edges
carry a `relation` label, so parallel relations between the same two entities are all
kept. PrimeKG-sized graphs load into `kg_compact.CompactKG` instead, which offers the
same methods (names and types, `relations_between`, `degree`, `distances`,
`shortest_paths`) on integer arrays; data preparation uses only those."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import networkx as nx


@dataclass
class KnowledgeGraph:
    graph: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    source: str = ""
    _undirected: nx.Graph | None = None

    def add_entity(self, node: str, name: str, type_: str, synonyms=()) -> None:
        if node in self.graph:
            syn = self.graph.nodes[node]["synonyms"]
            syn.extend(s for s in synonyms if s not in syn and s != name)
            return
        self.graph.add_node(node, name=name, type=type_, synonyms=[s for s in dict.fromkeys(synonyms) if s != name])

    def add_relation(self, head: str, relation: str, tail: str) -> None:
        # the relation label is also the edge key: the same labelled edge twice is one edge
        self.graph.add_edge(head, tail, key=relation, relation=relation)
        self._undirected = None

    def name(self, node: str) -> str:
        return self.graph.nodes[node]["name"]

    def type(self, node: str) -> str:
        return self.graph.nodes[node]["type"]

    def synonyms(self, node: str) -> list[str]:
        return self.graph.nodes[node]["synonyms"]

    def nodes_by_name(self) -> dict[str, str]:
        """canonical name → node id (first node wins when two share a name)."""
        out: dict[str, str] = {}
        for n, d in self.graph.nodes(data=True):
            out.setdefault(d["name"], n)
        return out

    def nodes(self):
        return self.graph.nodes

    def num_nodes(self) -> int:
        return self.graph.number_of_nodes()

    def __contains__(self, node) -> bool:
        return node in self.graph

    def degree(self, node) -> int:
        return self.undirected().degree(node)

    def distances(self, src, cutoff: int, limit: int = 0) -> dict:
        """node → hop distance ≤ cutoff in the undirected view (src itself at 0); `limit` is
        a hint that only the nearest ~limit are wanted (CompactKG stops after the level that
        reaches it; here the graphs are small and every node within cutoff is returned)."""
        return nx.single_source_shortest_path_length(self.undirected(), src, cutoff=cutoff)

    def shortest_paths(self, src, dst, limit: int = 50) -> list[tuple]:
        """Up to `limit` shortest paths src → dst in the undirected view; [] if none."""
        g = self.undirected()
        if src == dst or src not in g or dst not in g:
            return []
        try:
            return [tuple(p) for p in itertools.islice(nx.all_shortest_paths(g, src, dst), limit)]
        except nx.NetworkXNoPath:
            return []

    def undirected(self) -> nx.Graph:
        """Simple undirected view used for shortest paths and similarity (cached)."""
        if self._undirected is None:
            g = nx.Graph()
            g.add_nodes_from(self.graph.nodes)
            g.add_edges_from((u, v) for u, v in self.graph.edges() if u != v)
            self._undirected = g
        return self._undirected

    def relations_between(self, u: str, v: str) -> list[tuple[str, bool]]:
        """Every relation label between u and v: (label, True) for u→v, (label, False) for v→u."""
        fwd = sorted(self.graph[u][v]) if self.graph.has_edge(u, v) else []
        bwd = sorted(self.graph[v][u]) if self.graph.has_edge(v, u) else []
        return [(r, True) for r in fwd] + [(r, False) for r in bwd]
