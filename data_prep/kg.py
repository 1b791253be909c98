"""Knowledge-graph loaders (SPEC §4): PrimeKG `kg.csv`, PathoML OWL (RDF/XML) and the
project's own pathology graph (JSON or YAML, see `demo/pathology_kg.json`).

The pathology graph and OWL become a `KnowledgeGraph` (networkx, `kg_graph.py`;
re-exported here); PrimeKG, at 129k nodes and 8.1M edges, a `CompactKG` of integer
arrays (`kg_compact.py`, loaded by `kg_primekg.py`) with the same methods.

Entity types are normalised to the linker's vocabulary: diagnosis, finding, anatomy,
stage, concept (PrimeKG: disease → diagnosis, effect/phenotype → finding; other
PrimeKG types such as gene/protein or drug are kept as they are).
"""
from __future__ import annotations

import json
import os

from data_prep.kg_graph import KnowledgeGraph
from data_prep.kg_primekg import PRIMEKG_COLUMNS, load_primekg, read_primekg
from pathreasoner_jax.core.errors import UserError

__all__ = ["DEMO_KG", "PRIMEKG_COLUMNS", "KnowledgeGraph", "load_kg", "load_pathology_graph", "load_primekg_csv"]

DEMO_KG = os.path.join(os.path.dirname(__file__), "demo", "pathology_kg.json")


def load_pathology_graph(path: str) -> KnowledgeGraph:
    """{"entities": [{name, type, synonyms, id?}], "relations": [{head, relation, tail}]}
    (heads/tails by id or canonical name); .json, .yaml or .yml."""
    try:
        with open(path) as f:
            if path.endswith((".yaml", ".yml")):
                import yaml
                data = yaml.safe_load(f)
            else:
                data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: knowledge graph file not found") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable pathology graph ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict) or "entities" not in data:
        raise UserError(f"{path}: pathology graph needs an 'entities' list (and 'relations')")
    kg = KnowledgeGraph(source=path)
    alias = {}
    for i, e in enumerate(data["entities"]):
        if not isinstance(e, dict) or not e.get("name") or not e.get("type"):
            raise UserError(f"{path}: entity #{i} needs a name and a type")
        node = str(e.get("id", e["name"]))
        kg.add_entity(node, e["name"], e["type"], e.get("synonyms", []))
        alias[e["name"]] = node
    for i, r in enumerate(data.get("relations", [])):
        try:
            h, t = alias.get(r["head"], r["head"]), alias.get(r["tail"], r["tail"])
            label = r["relation"]
        except (KeyError, TypeError):
            raise UserError(f"{path}: relation #{i} needs head, relation and tail") from None
        if h not in kg.graph or t not in kg.graph:
            raise UserError(f"{path}: relation #{i} names an unknown entity ({r['head']!r} or {r['tail']!r})")
        kg.add_relation(h, label, t)
    return kg


def load_primekg_csv(path: str, max_rows: int = 0):
    """PrimeKG kg.csv with the SPEC §4 columns → `CompactKG` (no cache; `load_kg` caches)."""
    return read_primekg(path, max_rows)


def load_kg(path: str, fmt: str = "pathology", cache_dir: str = ""):
    """fmt: pathology | primekg | pathoml; an empty path means the demo pathology graph.
    PrimeKG comes back as a `CompactKG` (cached as .npz next to the file or in `cache_dir`)."""
    if fmt == "pathology":
        return load_pathology_graph(path or DEMO_KG)
    if not path:
        raise UserError(f"data.kg_path is required for kg_format {fmt!r}")
    if fmt == "primekg":
        return load_primekg(path, cache_dir)
    if fmt == "pathoml":
        from data_prep.kg_owl import load_pathoml_owl
        return load_pathoml_owl(path)
    raise UserError(f"unknown kg_format {fmt!r} (pathology | primekg | pathoml)")
