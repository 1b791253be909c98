"""KG loaders (PrimeKG csv, PathoML OWL, own pathology graph), path search and ranking,
and the entities.json similarity numbers."""
import csv
import os
import json
import math

import pytest

from pathreasoner_jax.core.errors import UserError
from data_prep.kg import DEMO_KG, PRIMEKG_COLUMNS, KnowledgeGraph, load_kg, load_pathology_graph, load_primekg_csv
from data_prep.paths import find_paths, verbalize


def _primekg(path, rows, columns=PRIMEKG_COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r[c] for c in columns])


def _row(rel, disp, xi, xt, xn, yi, yt, yn):
    return {"relation": rel, "display_relation": disp, "x_index": xi, "x_id": f"X{xi}", "x_type": xt,
            "x_name": xn, "x_source": "MONDO", "y_index": yi, "y_id": f"Y{yi}", "y_type": yt, "y_name": yn,
            "y_source": "HPO"}


def test_primekg_loader_keeps_parallel_relations(tmp_path):
    p = tmp_path / "kg.csv"
    _primekg(p, [_row("disease_phenotype_positive", "phenotype present", 1, "disease", "adenocarcinoma", 2,
                      "effect/phenotype", "gland formation"),
                 _row("disease_phenotype_negative", "phenotype absent", 1, "disease", "adenocarcinoma", 2,
                      "effect/phenotype", "gland formation"),
                 _row("anatomy_protein_present", "expression present", 3, "anatomy", "colon", 4,
                      "gene/protein", "CDX2")])
    kg = load_primekg_csv(str(p))
    n1, n2, n3, n4 = (kg.node(f"primekg:{i}") for i in (1, 2, 3, 4))
    assert kg.name(n1) == "adenocarcinoma" and kg.type(n1) == "diagnosis"
    assert kg.type(n2) == "finding" and kg.type(n3) == "anatomy"
    assert kg.type(n4) == "gene/protein"
    assert kg.relations_between(n1, n2) == [("phenotype absent", True), ("phenotype present", True)]
    assert kg.relations_between(n2, n1) == [("phenotype absent", False), ("phenotype present", False)]
    # parallel labelled edges are one undirected neighbour; the cache gives the same graph back
    assert kg.degree(n1) == 1 and kg.num_edges() == 3
    cached = load_kg(str(p), "primekg", cache_dir=str(tmp_path / "cache"))
    again = load_kg(str(p), "primekg", cache_dir=str(tmp_path / "cache"))
    assert os.path.isfile(tmp_path / "cache" / "kg.csv.pathreasoner.npz")
    for g in (cached, again):
        assert g.names == kg.names and g.keys == kg.keys and g.relations_between(n1, n2) == kg.relations_between(n1, n2)


def test_primekg_missing_column_is_a_one_line_error(tmp_path):
    p = tmp_path / "kg_bad.csv"
    cols = [c for c in PRIMEKG_COLUMNS if c != "y_name"]
    _primekg(p, [_row("r", "d", 1, "disease", "a", 2, "disease", "b")], cols)
    with pytest.raises(UserError) as e:
        load_kg(str(p), "primekg")
    assert str(e.value).startswith(str(p)) and "y_name" in str(e.value) and "\n" not in str(e.value)


OWL = """<?xml version="1.0"?>
<rdf:RDF xmlns="http://example.org/pathoml#" xml:base="http://example.org/pathoml"
  xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:rdfs="http://www.w3.org/2000/01/rdf-schema#"
  xmlns:owl="http://www.w3.org/2002/07/owl#" xmlns:skos="http://www.w3.org/2004/02/skos/core#">
  <owl:Ontology rdf:about="http://example.org/pathoml"/>
  <owl:ObjectProperty rdf:about="#hasFinding"><rdfs:label>has finding</rdfs:label></owl:ObjectProperty>
  <owl:Class rdf:about="#Disease"><rdfs:label>Disease</rdfs:label></owl:Class>
  <owl:Class rdf:about="#Carcinoma"><rdfs:subClassOf rdf:resource="#Disease"/></owl:Class>
  <owl:Class rdf:about="#Adenocarcinoma">
    <rdfs:label>adenocarcinoma</rdfs:label><skos:altLabel>adenoCA</skos:altLabel>
    <rdfs:subClassOf rdf:resource="#Carcinoma"/>
    <rdfs:subClassOf><owl:Restriction><owl:onProperty rdf:resource="#hasFinding"/>
      <owl:someValuesFrom rdf:resource="#GlandFormation"/></owl:Restriction></rdfs:subClassOf>
  </owl:Class>
  <owl:Class rdf:about="#MorphologicFeature"><rdfs:label>Morphologic feature</rdfs:label></owl:Class>
  <owl:Class rdf:about="#GlandFormation"><rdfs:label>gland formation</rdfs:label>
    <rdfs:subClassOf rdf:resource="#MorphologicFeature"/></owl:Class>
  <owl:Class rdf:about="#Colon"><rdfs:label>colon</rdfs:label>
    <rdfs:subClassOf><owl:Class rdf:about="#AnatomicalSite"/></rdfs:subClassOf></owl:Class>
</rdf:RDF>
"""


def test_pathoml_owl_loader(tmp_path):
    p = tmp_path / "pathoml.owl"
    p.write_text(OWL)
    kg = load_kg(str(p), "pathoml")
    ids = kg.nodes_by_name()
    adeno, gland = ids["adenocarcinoma"], ids["gland formation"]
    assert kg.type(adeno) == "diagnosis" and kg.synonyms(adeno) == ["adenoCA"]
    assert kg.type(gland) == "finding" and kg.type(ids["colon"]) == "anatomy"
    assert ids["Carcinoma"] and kg.type(ids["Carcinoma"]) == "diagnosis"  # label from the IRI fragment
    assert ("has finding", True) in kg.relations_between(adeno, gland)
    assert ("subclass_of", True) in kg.relations_between(adeno, ids["Carcinoma"])
    bad = tmp_path / "bad.owl"
    bad.write_text("<rdf:RDF><unclosed>")
    with pytest.raises(UserError, match="bad.owl"):
        load_kg(str(bad), "pathoml")


def test_demo_pathology_graph_loads():
    kg = load_kg("", "pathology")
    assert kg.source == DEMO_KG
    types = {kg.type(n) for n in kg.graph.nodes}
    assert {"diagnosis", "finding", "anatomy", "stage", "concept"} <= types
    n = kg.nodes_by_name()["nuclear pleomorphism"]
    c = kg.nodes_by_name()["cellular atypia"]
    assert len(kg.relations_between(n, c)) == 2  # parallel relations survive loading


def _small_kg():
    """A→B→D, A→C→D (two shortest paths), A→E→F→D (longer); C is a hub; A→B twice."""
    kg = KnowledgeGraph()
    for name in "ABCDEF":
        kg.add_entity(name, name.lower() + "-entity", "concept")
    for h, r, t in [("A", "indicates", "B"), ("A", "associated_with", "B"), ("B", "characteristic_of", "D"),
                    ("A", "indicates", "C"), ("D", "has_feature", "C"), ("A", "x", "E"), ("E", "x", "F"),
                    ("F", "x", "D")]:
        kg.add_relation(h, r, t)
    for i in range(5):  # make C a hub
        kg.add_entity(f"H{i}", f"h{i}", "concept")
        kg.add_relation("C", "x", f"H{i}")
    return kg


def test_path_search_known_shortest_paths_parallel_relations_and_hub_penalty():
    kg = _small_kg()
    paths = find_paths(kg, "A", "D", max_paths=50, top_k=3)
    assert sorted(p.nodes for p in paths) == [("A", "B", "D"), ("A", "C", "D")]
    # ranking: B (degree 2) before the hub C (degree 7): penalties log(3) < log(8)
    assert paths[0].nodes == ("A", "B", "D")
    assert paths[0].penalty == pytest.approx(math.log(3)) and paths[1].penalty == pytest.approx(math.log(8))
    assert set(paths[0].hops[0]) == {("indicates", True), ("associated_with", True)}
    assert paths[1].hops[1] == (("has_feature", False),)  # D→C read against its direction
    assert [p.nodes for p in find_paths(kg, "A", "D", top_k=1)] == [("A", "B", "D")]
    assert len(find_paths(kg, "A", "D", max_paths=1, top_k=3)) == 1
    assert verbalize(kg, paths[1]) == "a-entity indicates c-entity; d-entity has feature c-entity"
    kg.add_entity("Z", "z", "concept")
    assert find_paths(kg, "A", "Z") == []


def test_entities_json_similarity_numbers(tmp_path):
    from data_prep.entities import write_entities
    from pathreasoner_jax.data.store import load_entities
    kg = KnowledgeGraph()
    for n in "abcde":  # chain a–b–c–d–e; "b" has a synonym
        kg.add_entity(n, n, "concept", ["bee"] if n == "b" else [])
    for u, v in zip("abcd", "bcde"):
        kg.add_relation(u, "next", v)
    write_entities(str(tmp_path / "entities.json"), kg)
    raw = json.loads((tmp_path / "entities.json").read_text())
    assert [e["name"] for e in raw["entities"]] == list("abcde")
    assert raw["entities"][1]["synonyms"] == ["bee"]
    ents = load_entities(str(tmp_path))
    # 0.5 ** d within distance 3, absent beyond: a neighbour is never worth a synonym
    assert ents.sim(0, 0) == 1.0 and ents.sim(0, 1) == 0.5 and ents.sim(0, 2) == 0.25
    assert ents.sim(0, 3) == 0.125 and ents.sim(0, 4) == 0.0 and ents.sim(3, 0) == 0.125
    assert ents.index["bee"] == 1
    # the sparse neighbourhood of G = {b, d}: a, c, e at distance 1 (c from both), nothing else
    assert ents.near([1, 3]) == [(0, 0.5), (2, 0.5), (4, 0.5)]
    ctx = ents.context([[1, 3], []], k=3, m=2)
    assert ctx["gt_ids"].tolist() == [[1, 3, -1], [-1, -1, -1]]
    assert ctx["near_ids"].tolist() == [[0, 2], [-1, -1]] and ctx["near_sim"].tolist() == [[0.5, 0.5], [0, 0]]


def test_pathology_graph_errors(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"entities": [{"name": "a", "type": "finding"}],
                             "relations": [{"head": "a", "relation": "r", "tail": "missing"}]}))
    with pytest.raises(UserError, match="unknown entity"):
        load_pathology_graph(str(p))
    y = tmp_path / "g.yaml"
    y.write_text("entities:\n  - {name: a, type: finding, synonyms: [alpha]}\n  - {name: b, type: diagnosis}\n"
                 "relations:\n  - {head: a, relation: indicates, tail: b}\n")
    kg = load_pathology_graph(str(y))
    assert kg.synonyms("a") == ["alpha"] and kg.relations_between("a", "b") == [("indicates", True)]


def test_load_entities_is_also_the_raw_mapping(tmp_path):
    from data_prep.entities import write_entities
    from pathreasoner_jax.data.store import load_entities
    kg = KnowledgeGraph()
    kg.add_entity("x", "x-name", "finding", ["ex"])
    write_entities(str(tmp_path / "entities.json"), kg)
    ents = load_entities(str(tmp_path))
    assert ents["entities"] == [{"name": "x-name", "type": "finding", "synonyms": ["ex"]}]
    assert ents["similarity"] == [] and ents.names == ["x-name"]
