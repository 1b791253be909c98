"""A PrimeKG-shaped synthetic `kg.csv` for benchmarks and tests (the real file cannot be
downloaded here): the same 12 columns, PrimeKG's ten node types in its proportions
(129,375 nodes at full size), its edge count (8.1M rows: every undirected edge listed in
both directions, as PrimeKG does), and a heavy-tailed degree distribution — each node
draws a Pareto(1.2) weight and edge endpoints are sampled in proportion to it within
their types, so a few hubs have thousands of neighbours and most nodes a handful.
Names are unique pseudo-words ("velantoma 12"), so report text can mention them.

`python -m data_prep.kg_synthetic OUT.csv [--nodes N] [--edges E] [--seed S]`
"""
from __future__ import annotations

import argparse

import numpy as np

from pathreasoner_jax.core.io import atomic_path

# PrimeKG's node types and counts (Chandak et al. 2023, Table 1)
TYPES = {"gene/protein": 27671, "drug": 7957, "effect/phenotype": 15311, "disease": 17080,
         "biological_process": 28642, "molecular_function": 11169, "cellular_component": 4176,
         "exposure": 818, "pathway": 2516, "anatomy": 14035}
FULL_NODES, FULL_EDGES = sum(TYPES.values()), 8_100_498
# the relation mix: (type a, type b, share of edges, relation, display relation)
RELATIONS = [
    ("gene/protein", "gene/protein", 0.16, "protein_protein", "ppi"),
    ("drug", "drug", 0.33, "drug_drug", "synergistic interaction"),
    ("anatomy", "gene/protein", 0.20, "anatomy_protein_present", "expression present"),
    ("disease", "effect/phenotype", 0.04, "disease_phenotype_positive", "phenotype present"),
    ("disease", "gene/protein", 0.02, "disease_protein", "associated with"),
    ("disease", "disease", 0.01, "disease_disease", "parent-child"),
    ("effect/phenotype", "effect/phenotype", 0.01, "phenotype_phenotype", "parent-child"),
    ("biological_process", "gene/protein", 0.07, "bioprocess_protein", "interacts with"),
    ("molecular_function", "gene/protein", 0.04, "molfunc_protein", "interacts with"),
    ("cellular_component", "gene/protein", 0.02, "cellcomp_protein", "interacts with"),
    ("drug", "gene/protein", 0.02, "drug_protein", "target"),
    ("drug", "disease", 0.01, "indication", "indication"),
    ("drug", "effect/phenotype", 0.05, "drug_effect", "side effect"),
    ("pathway", "gene/protein", 0.005, "pathway_protein", "interacts with"),
    ("exposure", "disease", 0.005, "exposure_disease", "linked to"),
    ("anatomy", "anatomy", 0.01, "anatomy_anatomy", "parent-child"),
]
SYLLABLES = ["ve", "lan", "to", "ma", "ri", "cor", "bel", "xi", "na", "dro", "pel", "su", "tha", "mi",
             "go", "ker", "al", "fen", "op", "qua", "zel", "ur", "bi", "nos"]


def _name(i: int) -> str:
    """A unique pronounceable name per node index: two or three pseudo-words."""
    n, parts = i, []
    for _ in range(3):
        parts.append(SYLLABLES[n % len(SYLLABLES)] + SYLLABLES[(n // len(SYLLABLES)) % len(SYLLABLES)])
        n //= len(SYLLABLES) ** 2
        if n == 0:
            break
    return " ".join(parts) + f" {i}"


def synthetic_primekg(path: str, nodes: int = FULL_NODES, edges: int = FULL_EDGES, seed: int = 0) -> dict:
    """Writes the CSV; returns {"nodes", "rows", "types"} of what was written."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    rng = np.random.default_rng(seed)
    scale = nodes / FULL_NODES
    counts = {t: max(2, int(round(c * scale))) for t, c in TYPES.items()}
    start, by_type = 0, {}
    for t, c in counts.items():
        by_type[t] = np.arange(start, start + c)
        start += c
    weight = rng.pareto(1.2, start) + 1.0
    type_of = np.empty(start, object)
    for t, idx in by_type.items():
        type_of[idx] = t
    undirected = edges // 2
    shares = np.array([r[2] for r in RELATIONS])
    per_rel = rng.multinomial(undirected, shares / shares.sum())
    cols = {c: [] for c in ("x", "y", "rel", "disp")}
    for (ta, tb, _, rel, disp), m in zip(RELATIONS, per_rel):
        ends = []
        for t in (ta, tb):
            w = weight[by_type[t]]
            ends.append(rng.choice(by_type[t], size=m, p=w / w.sum()))
        keep = ends[0] != ends[1]
        for a, b in ((ends[0], ends[1]), (ends[1], ends[0])):  # both directions, as PrimeKG lists them
            cols["x"].append(a[keep])
            cols["y"].append(b[keep])
            cols["rel"].append(np.full(keep.sum(), rel, object))
            cols["disp"].append(np.full(keep.sum(), disp, object))
    x, y = np.concatenate(cols["x"]), np.concatenate(cols["y"])
    names = np.asarray([_name(i) for i in range(start)], object)
    source = np.full(len(x), "SYN", object)
    table = pa.table({
        "relation": np.concatenate(cols["rel"]), "display_relation": np.concatenate(cols["disp"]),
        "x_index": x, "x_id": x.astype(str), "x_type": type_of[x], "x_name": names[x], "x_source": source,
        "y_index": y, "y_id": y.astype(str), "y_type": type_of[y], "y_name": names[y], "y_source": source})
    with atomic_path(path) as tmp:
        pcsv.write_csv(table, tmp)
    return {"nodes": int(start), "rows": int(len(x)), "types": {t: int(c) for t, c in counts.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--nodes", type=int, default=FULL_NODES)
    ap.add_argument("--edges", type=int, default=FULL_EDGES)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(synthetic_primekg(a.out, a.nodes, a.edges, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
