"""PathoML-style OWL ontology (RDF/XML) → KnowledgeGraph, with rdflib.

Entities: named `owl:Class`es and `owl:NamedIndividual`s; name = `rdfs:label` (else the
IRI fragment); synonyms = `skos:altLabel`, `skos:prefLabel` and the oboInOwl
exact/related/broad/narrow synonyms. Relations: `rdfs:subClassOf` a named class →
"subclass_of"; `rdfs:subClassOf` an `owl:Restriction` (onProperty P, some/allValuesFrom
C) → P's label; object-property assertions between individuals → the property's label;
`rdf:type` of an individual → "instance_of".

Types come from the ancestors' names (the class itself first): diagnosis (disease,
diagnosis, neoplasm, tumo(u)r, carcinoma, lymphoma), finding (finding, feature,
morpholog, phenotype, observation), anatomy (anatom, organ, tissue, body part), stage
(stage, grade); anything else is a concept.
"""
from __future__ import annotations

import re

from pathreasoner_jax.core.errors import UserError
from data_prep.kg_graph import KnowledgeGraph

_TYPE_KEYWORDS = (
    ("diagnosis", ("disease", "diagnosis", "neoplasm", "tumor", "tumour", "carcinoma", "lymphoma")),
    ("finding", ("finding", "feature", "morpholog", "phenotype", "observation")),
    ("anatomy", ("anatom", "organ", "tissue", "body part")),
    ("stage", ("stage", "grade")),
)
_OBO = "http://www.geneontology.org/formats/oboInOwl#"
_SYN_PREDICATES = ("http://www.w3.org/2004/02/skos/core#altLabel", "http://www.w3.org/2004/02/skos/core#prefLabel",
                   _OBO + "hasExactSynonym", _OBO + "hasRelatedSynonym", _OBO + "hasBroadSynonym",
                   _OBO + "hasNarrowSynonym")


def _fragment(iri: str) -> str:
    frag = re.split(r"[#/]", str(iri).rstrip("/#"))[-1]
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", frag).replace("_", " ").strip()


def _type_from(names: list[str]) -> str:
    for name in names:  # nearest ancestor first
        low = name.lower()
        for t, keys in _TYPE_KEYWORDS:
            if any(k in low for k in keys):
                return t
    return "concept"


def load_pathoml_owl(path: str) -> KnowledgeGraph:
    import rdflib
    from rdflib.namespace import OWL, RDF, RDFS

    g = rdflib.Graph()
    try:
        g.parse(path, format="xml")
    except FileNotFoundError:
        raise UserError(f"{path}: knowledge graph file not found") from None
    except Exception as e:  # rdflib raises SAX / plugin errors of several types
        raise UserError(f"{path}: not a readable OWL RDF/XML file ({' '.join(str(e).split())[:200]})") from None

    def label(node) -> str:
        lab = g.value(node, RDFS.label)
        return str(lab) if lab is not None else _fragment(node)

    classes = {c for c in g.subjects(RDF.type, OWL.Class) if isinstance(c, rdflib.URIRef)}
    individuals = {i for i in g.subjects(RDF.type, OWL.NamedIndividual) if isinstance(i, rdflib.URIRef)}
    parents = {c: sorted(p for p in g.objects(c, RDFS.subClassOf) if isinstance(p, rdflib.URIRef)) for c in classes}

    def ancestors(c) -> list[str]:
        out, seen, frontier = [label(c)], {c}, list(parents.get(c, []))
        while frontier:
            p = frontier.pop(0)
            if p in seen:
                continue
            seen.add(p)
            out.append(label(p))
            frontier.extend(parents.get(p, []))
        return out

    kg = KnowledgeGraph(source=path)
    for node in sorted(classes | individuals):
        synonyms = sorted({str(o) for p in _SYN_PREDICATES for o in g.objects(node, rdflib.URIRef(p))})
        if node in classes:
            t = _type_from(ancestors(node))
        else:
            t = _type_from([n for c in g.objects(node, RDF.type) if c in classes for n in ancestors(c)])
        kg.add_entity(str(node), label(node), t, synonyms)
    for c in sorted(classes):
        for p in g.objects(c, RDFS.subClassOf):
            if isinstance(p, rdflib.URIRef) and p in classes:
                kg.add_relation(str(c), "subclass_of", str(p))
            elif (p, RDF.type, OWL.Restriction) in g:
                prop = g.value(p, OWL.onProperty)
                filler = g.value(p, OWL.someValuesFrom) or g.value(p, OWL.allValuesFrom)
                if prop is not None and filler in classes:
                    kg.add_relation(str(c), label(prop), str(filler))
    props = set(g.subjects(RDF.type, OWL.ObjectProperty))
    for s, p, o in sorted(g.triples((None, None, None))):
        if s in individuals and p in props and o in individuals:
            kg.add_relation(str(s), label(p), str(o))
        elif s in individuals and p == RDF.type and o in classes:
            kg.add_relation(str(s), "instance_of", str(o))
    if kg.num_nodes() == 0:
        raise UserError(f"{path}: no owl:Class or owl:NamedIndividual found")
    return kg
