"""Entity linking (exact, synonym, case, fuzzy, negation, typing) and the report-level
evidence, including a report with no linkable entity."""
import pytest

from data_prep.kg import KnowledgeGraph, load_kg
from data_prep.linking import EntityLinker
from data_prep.trajectories import SampleError, analyse_report


@pytest.fixture(scope="module")
def linker():
    return EntityLinker(load_kg("", "pathology"))


def test_exact_synonym_case_and_longest_match(linker):
    text = "Sections show Keratin Pearls and SCC; squamous cell carcinoma is favoured."
    ms = linker.link(text)
    assert [(m.name, m.type) for m in ms] == [("keratin pearls", "finding"), ("squamous cell carcinoma", "diagnosis"),
                                              ("squamous cell carcinoma", "diagnosis")]
    assert [text[m.start:m.end] for m in ms] == ["Keratin Pearls", "SCC", "squamous cell carcinoma"]
    # longest match wins: "carcinoma" alone is an entity too, but not inside the longer name
    assert "carcinoma" not in [m.name for m in ms]


def test_whole_words_only():
    kg = KnowledgeGraph()
    kg.add_entity("g", "gland", "finding")
    kg.add_entity("c", "colon", "anatomy")
    ms = EntityLinker(kg).link("glandular tissue of the semicolon; a gland in the colon.")
    assert [(m.name, m.surface) for m in ms] == [("gland", "gland"), ("colon", "colon")]


def test_fuzzy_match_above_threshold_only(linker):
    ms = linker.link("There is marked nuclear pleomorphsim.")
    assert [(m.name, m.surface) for m in ms] == [("nuclear pleomorphism", "nuclear pleomorphsim")]
    assert 0.88 <= ms[0].score < 1.0
    assert linker.link("There is marked nuclear polymorphic change.") == []
    strict = EntityLinker(linker.kg, fuzzy_threshold=1.0)
    assert strict.link("There is marked nuclear pleomorphsim.") == []


def test_negation_scope(linker):
    ms = linker.link("No keratin pearls are seen. Goblet cells are present but no dirty necrosis.")
    got = {m.name: m.negated for m in ms}
    assert got == {"keratin pearls": True, "goblet cells": False, "dirty necrosis": True}
    ms = linker.link("No necrosis, but irregular glands are present.")
    assert {m.name: m.negated for m in ms} == {"irregular glands": False}


def test_report_evidence_and_unlinkable_report(linker):
    rep = ("Specimen: colon, resection.\nMicroscopic description: Sections show irregular glands and "
           "desmoplasia. No keratin pearls is identified.\nDiagnosis: colonic adenocarcinoma, pT3.")
    ev = analyse_report(linker, rep)
    kg = linker.kg
    assert kg.name(ev.diagnosis) == "colorectal adenocarcinoma"
    assert [kg.name(f) for f in ev.findings] == ["irregular glands", "desmoplastic stroma"]
    assert [kg.name(a) for a in ev.anatomy] == ["colon"]
    with pytest.raises(SampleError, match="no linkable KG entity"):
        analyse_report(linker, "The specimen was received in formalin and entirely submitted.")
    with pytest.raises(SampleError, match="not a KG diagnosis"):
        analyse_report(linker, rep, diagnosis_hint="mystery disease")
    with pytest.raises(SampleError, match="no linkable finding"):
        analyse_report(linker, "Diagnosis: squamous cell carcinoma.")
