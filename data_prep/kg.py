"""Knowledge-graph loaders (SPEC §4): PrimeKG `kg.csv`, PathoML OWL (RDF/XML) and the
project's own pathology graph (JSON or YAML, see `demo/pathology_kg.json`).

All three become a `KnowledgeGraph` (`kg_graph.py`; re-exported here).

Entity types are normalised to the linker's vocabulary: diagnosis, finding, anatomy,
stage, concept (PrimeKG: disease → diagnosis, effect/phenotype → finding; other
PrimeKG types such as gene/protein or drug are kept as they are).
"""
from __future__ import annotations

import csv
import json
import os

from data_prep.kg_graph import KnowledgeGraph
from pathreasoner_jax.core.errors import UserError

DEMO_KG = os.path.join(os.path.dirname(__file__), "demo", "pathology_kg.json")
PRIMEKG_COLUMNS = ("relation", "display_relation", "x_index", "x_id", "x_type", "x_name", "x_source",
                   "y_index", "y_id", "y_type", "y_name", "y_source")
_PRIMEKG_TYPES = {"disease": "diagnosis", "effect/phenotype": "finding", "anatomy": "anatomy"}


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


def load_primekg_csv(path: str, max_rows: int = 0) -> KnowledgeGraph:
    """PrimeKG kg.csv with the SPEC §4 columns; edge label = display_relation (or relation)."""
    kg = KnowledgeGraph(source=path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PRIMEKG_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: PrimeKG file lacks column(s) {', '.join(missing)}")
            for i, row in enumerate(reader):
                if max_rows and i >= max_rows:
                    break
                if None in row or None in row.values():  # DictReader's marks of a long or short row
                    n = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                    raise UserError(f"{path}: line {reader.line_num} has {n} fields where the header has "
                                    f"{len(reader.fieldnames)}")
                ends = []
                for s in ("x", "y"):
                    node = f"primekg:{row[s + '_index']}"
                    kg.add_entity(node, row[s + "_name"], _PRIMEKG_TYPES.get(row[s + "_type"], row[s + "_type"]))
                    ends.append(node)
                kg.add_relation(ends[0], row["display_relation"] or row["relation"], ends[1])
    except FileNotFoundError:
        raise UserError(f"{path}: knowledge graph file not found") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    return kg


def load_kg(path: str, fmt: str = "pathology") -> KnowledgeGraph:
    """fmt: pathology | primekg | pathoml; an empty path means the demo pathology graph."""
    if fmt == "pathology":
        return load_pathology_graph(path or DEMO_KG)
    if not path:
        raise UserError(f"data.kg_path is required for kg_format {fmt!r}")
    if fmt == "primekg":
        return load_primekg_csv(path)
    if fmt == "pathoml":
        from data_prep.kg_owl import load_pathoml_owl
        return load_pathoml_owl(path)
    raise UserError(f"unknown kg_format {fmt!r} (pathology | primekg | pathoml)")
