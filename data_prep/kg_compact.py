"""A knowledge graph at PrimeKG's size (129k nodes, 8.1M edges) as integer arrays.

Nodes are 0..N−1 (names, types and synonyms by index); the directed, labelled edges are
three int32 arrays sorted by (head, tail), so `relations_between` is a binary search; the
undirected simple view used for distances, paths and hub penalties is a CSR adjacency
(`indptr`, `indices`) with degrees computed once. That is ~15 bytes per directed edge
(~120 MB for PrimeKG) where a networkx MultiDiGraph takes several GB, and it saves to and
loads from one .npz (no pickle) in about a second.

The graph algorithms are the ones `kg_graph.KnowledgeGraph` offers, on arrays:
- `distances(src, cutoff)`: breadth-first levels, each level one vectorised gather of the
  frontier's neighbours — O(edges reached).
- `shortest_paths(src, dst, limit)`: bidirectional breadth-first search (each round grows
  the side whose frontier has fewer edges) until the two sides meet — O(E) at worst, far
  less between nodes a hub or two apart — then, for each meeting node in index order,
  the shortest-path DAG walked back to both ends, stopping after `limit` paths
  (MedReason's 50): O(limit · length) more, so a pair between two hubs cannot blow up
  however many shortest paths they have.
"""
from __future__ import annotations

import json
import os

import numpy as np

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import atomic_path

FORMAT_VERSION = 2  # 2: node keys stored


def _pack(strings) -> tuple[np.ndarray, np.ndarray]:
    data = [s.encode() for s in strings]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return np.frombuffer(b"".join(data), np.uint8), offsets


def _unpack(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    return [raw[a:b].decode() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


class CompactKG:
    """names/types (N lists), synonyms ({index: [str]}), directed edges head/tail/rel
    (int32 arrays, rel indexing `relations`), `source` (the file it came from)."""

    def __init__(self, names, types, synonyms, head, tail, rel, relations, source: str = "", keys=None):
        self.names, self.types = list(names), list(types)
        self.synonym_map = {int(k): list(v) for k, v in dict(synonyms).items()}
        self.relations, self.source = list(relations), source
        # each node's id in the source (e.g. "primekg:1"); default: its index
        self.keys: list[str] = list(keys) if keys is not None else [str(i) for i in range(len(self.names))]
        n = len(self.names)
        head, tail, rel = (np.asarray(x, np.int32) for x in (head, tail, rel))
        key = head.astype(np.int64) * n + tail
        order = np.lexsort((rel, key))
        key, rel = key[order], rel[order]
        first = np.ones(len(key), bool)  # the same labelled edge twice is one edge
        first[1:] = (key[1:] != key[:-1]) | (rel[1:] != rel[:-1])
        self.edge_key, self.edge_rel = key[first], rel[first]
        a, b = self.edge_key // n, self.edge_key % n
        und = np.unique(np.minimum(a, b)[a != b] * n + np.maximum(a, b)[a != b])
        u, v = und // n, und % n
        both = np.concatenate([u, v]), np.concatenate([v, u])
        order = np.lexsort((both[1], both[0]))
        self.indices = both[1][order].astype(np.int32)
        self.indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(both[0], minlength=n), out=self.indptr[1:])
        self.degrees = np.diff(self.indptr).astype(np.int64)

    # ------------------------------------------------------------ the KnowledgeGraph surface
    def nodes(self):
        return range(len(self.names))

    def num_nodes(self) -> int:
        return len(self.names)

    def num_edges(self) -> int:
        return len(self.edge_key)

    def __contains__(self, node) -> bool:
        return isinstance(node, (int, np.integer)) and 0 <= node < len(self.names)

    def node(self, key: str) -> int:
        """The index of a node by its id in the source (e.g. "primekg:1")."""
        if not hasattr(self, "_key_index"):
            self._key_index = {k: i for i, k in enumerate(self.keys)}
        return self._key_index[key]

    def name(self, node) -> str:
        return self.names[node]

    def type(self, node) -> str:
        return self.types[node]

    def synonyms(self, node) -> list[str]:
        return self.synonym_map.get(int(node), [])

    def nodes_by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, s in enumerate(self.names):
            out.setdefault(s, i)
        return out

    def degree(self, node) -> int:
        return int(self.degrees[node])

    def neighbours(self, node) -> np.ndarray:
        return self.indices[self.indptr[node]:self.indptr[node + 1]]

    def relations_between(self, u, v) -> list[tuple[str, bool]]:
        n = len(self.names)

        def labels(a, b):
            k = a * n + b
            lo, hi = np.searchsorted(self.edge_key, [k, k + 1])
            return sorted(self.relations[r] for r in self.edge_rel[lo:hi])
        return [(r, True) for r in labels(u, v)] + [(r, False) for r in labels(v, u)]

    def _expand(self, frontier: np.ndarray) -> np.ndarray:
        """Every neighbour of the frontier nodes (with repeats), one gather."""
        starts, ends = self.indptr[frontier], self.indptr[frontier + 1]
        counts = ends - starts
        if counts.sum() == 0:
            return np.zeros(0, np.int32)
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        return self.indices[offsets]

    def distances(self, src, cutoff: int, limit: int = 0) -> dict[int, int]:
        """node → hop distance ≤ cutoff; with `limit`, the search stops after the first
        level at which more than `limit` nodes are known (that level complete, so "the
        nearest `limit`" is still well defined)."""
        dist = {int(src): 0}
        seen = np.zeros(len(self.names), bool)
        seen[src] = True
        frontier = np.asarray([src], np.int64)
        for d in range(1, cutoff + 1):
            nxt = np.unique(self._expand(frontier))
            nxt = nxt[~seen[nxt]]
            if not len(nxt):
                break
            seen[nxt] = True
            dist.update(dict.fromkeys(nxt.tolist(), d))
            frontier = nxt.astype(np.int64)
            if limit and len(dist) > limit:
                break
        return dist

    def shortest_paths(self, src, dst, limit: int = 50) -> list[tuple[int, ...]]:
        """Up to `limit` shortest src → dst paths (module docstring), bidirectional: each
        round expands the side with the smaller frontier, so a path between two nodes a
        hub apart touches the hub's neighbours once instead of the graph."""
        if src == dst or src not in self or dst not in self:
            return []
        n = len(self.names)
        lev = [np.full(n, -1, np.int32), np.full(n, -1, np.int32)]  # hops from src / from dst
        lev[0][src], lev[1][dst] = 0, 0
        front = [np.asarray([src], np.int64), np.asarray([dst], np.int64)]
        meet = np.zeros(0, np.int64)
        while len(front[0]) and len(front[1]):
            side = 0 if self._reach(front[0]) <= self._reach(front[1]) else 1
            nxt = np.unique(self._expand(front[side]))
            nxt = nxt[lev[side][nxt] < 0]
            lev[side][nxt] = lev[side][front[side][0]] + 1
            front[side] = nxt.astype(np.int64)
            meet = nxt[lev[1 - side][nxt] >= 0]
            if len(meet):
                break
        out: list[tuple[int, ...]] = []
        for m in np.sort(meet).tolist():
            for left in self._walk(lev[0], m, limit - len(out)):
                for right in self._walk(lev[1], m, limit - len(out)):
                    out.append(tuple(reversed(left))[:-1] + right)  # src … m … dst, m once
                    if len(out) >= limit:
                        return out
        return out

    def _reach(self, frontier: np.ndarray) -> int:
        return int((self.indptr[frontier + 1] - self.indptr[frontier]).sum())

    def _walk(self, level: np.ndarray, start: int, limit: int):
        """Paths start → the level-0 node along strictly decreasing `level`, in index order."""
        stack = [(start, (start,))]
        while stack and limit > 0:
            node, path = stack.pop()
            if level[node] == 0:
                limit -= 1
                yield path
                continue
            nb = self.neighbours(node)
            nb = nb[level[nb] == level[node] - 1]
            stack.extend((int(p), path + (int(p),)) for p in nb[::-1])

    # ------------------------------------------------------------ the .npz cache
    def save(self, path: str, extra: dict | None = None) -> None:
        """One .npz (strings packed as UTF-8 bytes + offsets; no pickle); `extra`: any JSON."""
        n = len(self.names)
        names, name_off = _pack(self.names)
        keys, key_off = _pack(self.keys)
        type_vocab = sorted(set(self.types))
        tcode = {t: i for i, t in enumerate(type_vocab)}
        meta = {"version": FORMAT_VERSION, "source": self.source, "relations": self.relations,
                "types": type_vocab, "synonyms": self.synonym_map, "extra": extra or {}}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, names=names, name_offsets=name_off, keys=keys, key_offsets=key_off,
                         types=np.asarray([tcode[t] for t in self.types], np.int16),
                         head=(self.edge_key // n).astype(np.int32), tail=(self.edge_key % n).astype(np.int32),
                         rel=self.edge_rel.astype(np.int32),
                         meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

    @classmethod
    def load(cls, path: str) -> tuple["CompactKG", dict]:
        """→ (graph, the `extra` saved with it)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                if meta.get("version") != FORMAT_VERSION:
                    raise ValueError(f"cache format {meta.get('version')}, expected {FORMAT_VERSION}")
                types = [meta["types"][i] for i in z["types"].tolist()]
                kg = cls(_unpack(z["names"], z["name_offsets"]), types, meta["synonyms"], z["head"], z["tail"],
                         z["rel"], meta["relations"], meta["source"], _unpack(z["keys"], z["key_offsets"]))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a readable knowledge-graph cache ({e})") from None
        return kg, meta.get("extra", {})


def file_fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
