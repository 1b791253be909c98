"""PrimeKG at scale: the array graph (`CompactKG`) against networkx on a synthetic
PrimeKG-shaped file, the bounded path search, and a lexicon + reward context whose
sizes do not grow with |V|²."""
import random

import numpy as np
import pytest

from data_prep.kg_graph import KnowledgeGraph
from data_prep.kg_primekg import read_primekg
from data_prep.kg_synthetic import TYPES, synthetic_primekg
from data_prep.paths import find_paths


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("kg") / "kg.csv")
    info = synthetic_primekg(path, nodes=1500, edges=16000, seed=3)
    compact = read_primekg(path)
    nxg = KnowledgeGraph(source=path)  # the same graph through networkx, node ids = indices
    for i in compact.nodes():
        nxg.add_entity(i, compact.name(i), compact.type(i))
    n = compact.num_nodes()
    for k, r in zip(compact.edge_key.tolist(), compact.edge_rel.tolist()):
        nxg.add_relation(k // n, compact.relations[r], k % n)
    return info, compact, nxg


def test_synthetic_file_has_primekg_types_and_hubs(graphs):
    info, kg, _ = graphs
    assert set(info["types"]) == set(TYPES) and info["rows"] % 2 == 0  # every edge listed both ways
    deg = kg.degrees[kg.degrees > 0]
    assert deg.max() > 20 * np.median(deg)  # a heavy tail: hubs
    assert {kg.type(i) for i in kg.nodes()} >= {"diagnosis", "finding", "anatomy", "gene/protein"}


def test_array_graph_equals_networkx(graphs):
    _, kg, nxg = graphs
    rng = random.Random(0)
    nodes = [i for i in kg.nodes() if kg.degree(i) > 0]
    for src in rng.sample(nodes, 15):
        assert kg.degree(src) == nxg.degree(src)
        assert kg.distances(src, 3) == nxg.distances(src, 3)
    pairs = 0
    for _ in range(60):
        a, b = rng.sample(nodes, 2)
        want = set(nxg.shortest_paths(a, b, limit=10 ** 6))
        got = kg.shortest_paths(a, b, limit=10 ** 6)
        assert set(got) == want and len(got) == len(want)
        if len(want) <= 50:  # the ranked top 3 agree whenever the cap did not cut
            assert find_paths(kg, a, b) == find_paths(nxg, a, b)
            pairs += bool(want)
        assert kg.relations_between(a, b) == nxg.relations_between(a, b)
    assert pairs > 20


def test_path_search_stops_at_the_cap_with_valid_shortest_paths(graphs):
    _, kg, nxg = graphs
    hubs = np.argsort(-kg.degrees)[:40].tolist()
    capped = 0
    for a, b in zip(hubs[::2], hubs[1::2]):
        total = len(nxg.shortest_paths(a, b, limit=10 ** 6))
        got = kg.shortest_paths(a, b, limit=5)
        assert len(got) == min(5, total) and len(set(got)) == len(got)
        d = nxg.distances(a, 10)[b] if total else None
        for p in got:  # each one a real shortest path
            assert p[0] == a and p[-1] == b and len(p) == d + 1
            assert all(kg.relations_between(u, v) for u, v in zip(p, p[1:]))
        capped += total > 5
    assert capped >= 1


def test_large_kg_lexicon_and_reward_context_stay_sparse(graphs, tmp_path):
    """The lexicon of a graph above max_full keeps the corpus entities, their nearest
    neighbours and every diagnosis/finding; the per-prompt reward context is (n, K) and
    (n, M) however many entities there are."""
    from data_prep.entities import ANSWER_TYPES, build_entities
    from pathreasoner_jax.data.store import Entities
    _, kg, _ = graphs
    rng = random.Random(1)
    diseases = [i for i in kg.nodes() if kg.type(i) == "diagnosis" and kg.degree(i) > 0]
    corpus = {kg.name(i) for i in rng.sample(diseases, 5)}
    data = build_entities(kg, corpus, max_full=100, max_similar=32)
    ents = Entities(data)
    names = set(ents.names)
    assert corpus <= names and data["kg_nodes"] == kg.num_nodes()
    answer = {kg.name(i) for i in kg.nodes() if kg.type(i) in ANSWER_TYPES}
    assert answer <= names and len(names) < kg.num_nodes()
    others = names - answer - corpus  # only neighbours of the corpus entities beyond the answer types
    assert len(others) <= 5 * 32
    # every similarity pair involves a corpus entity (the BFS sources), at most 32 each
    idx = {n: i for i, n in enumerate(ents.names)}
    sources = {idx[c] for c in corpus}
    assert all(i in sources or j in sources for i, j, _ in data["similarity"])
    gt = [[idx[c]] for c in sorted(corpus)]
    ctx = ents.context(gt, k=8, m=64)
    assert ctx["gt_ids"].shape == (5, 8) and ctx["near_ids"].shape == (5, 64) and ctx["near_sim"].shape == (5, 64)
    for r, g in enumerate(gt):
        near = dict(ents.near(g))
        assert 0 < len(near) <= 32 and max(near.values()) == 0.5
        got = {int(e): float(s) for e, s in zip(ctx["near_ids"][r], ctx["near_sim"][r]) if e >= 0}
        assert got == near
