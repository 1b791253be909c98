"""The harder demo task (`data.demo_task=hard`, configs/ablation.yaml): eight diagnoses in
confusable groups, where the answer needs one focal finding, sometimes from a second region.

Every class is a base tissue (the four classes of the basic demo) and three of them the
same base with one round focus of another texture over `FOCAL_FRACTION` of the tissue:
  normal colonic mucosa     vs tubular adenoma                   (+ a focus of dysplastic crypts)
  colorectal adenocarcinoma vs mucinous adenocarcinoma           (+ extracellular mucin pools)
  reactive lymphoid hyperplasia vs metastatic adenocarcinoma     (+ a gland-forming deposit)
                            vs metastatic squamous cell carcinoma (+ a keratinising deposit)
  squamous cell carcinoma   (whole slide; its texture is the last class's focus)
The two metastases differ only in what the focus is made of, and each differs from the
primary tumour of that texture only by the lymphoid background: the diagnosis needs both
regions. Reports name two or three base findings and always the focal ones; a report of a
base class often says the partner's focal finding is absent. The KG extension
(`hard_kg.json`, merged into the demo KG) links the focal findings and the lymph-node
background to the new diagnoses, so the reasoning paths are what separate the pairs.
"""
from __future__ import annotations

import json
import os
import random

from data_prep.demo.vocabulary import CLASS_INFO, PROCEDURES, surface

FOCAL_FRACTION = 0.25
KG_EXTENSION = os.path.join(os.path.dirname(__file__), "hard_kg.json")

# class: (diagnosis, base texture, focal texture or None, focal findings, sites, stages)
HARD_CLASSES = {
    "normal_mucosa": ("normal colonic mucosa", "normal_mucosa", None, [], ["colon", "rectum"], []),
    "tubular_adenoma": ("tubular adenoma", "normal_mucosa", "dysplasia",
                        ["dysplastic crypts", "nuclear stratification"], ["colon", "rectum"], []),
    "adenocarcinoma": ("colorectal adenocarcinoma", "adenocarcinoma", None, [], ["colon", "rectum"], ["pT2", "pT3"]),
    "mucinous_adenocarcinoma": ("mucinous adenocarcinoma", "adenocarcinoma", "mucin", ["extracellular mucin pools"],
                                ["colon", "rectum"], ["pT2", "pT3"]),
    "squamous_cell_carcinoma": ("squamous cell carcinoma", "squamous_cell_carcinoma", None, [],
                                ["esophagus", "skin", "lung"], ["pT1", "pT2"]),
    "lymphoid": ("reactive lymphoid hyperplasia", "lymphoid", None, [], ["lymph node", "tonsil"], []),
    "nodal_adenocarcinoma": ("metastatic adenocarcinoma", "lymphoid", "adenocarcinoma",
                             ["metastatic tumour deposit", "irregular glands"], ["lymph node"], []),
    "nodal_squamous": ("metastatic squamous cell carcinoma", "lymphoid", "squamous_cell_carcinoma",
                       ["metastatic tumour deposit", "keratin pearls"], ["lymph node"], []),
}
HARD_CLASS_NAMES = tuple(HARD_CLASSES)
# the focal findings a base class's report may say are absent (its confusable partners')
_ABSENT = {"normal_mucosa": ["dysplastic crypts"], "adenocarcinoma": ["extracellular mucin pools"],
           "lymphoid": ["metastatic tumour deposit"], "squamous_cell_carcinoma": ["lymphoid follicles"]}


def render_spec(cls: str) -> tuple[str, tuple[str, float] | None]:
    """→ (base texture, (focal texture, fraction) or None) for `synth.render`."""
    _, base, focal, *_ = HARD_CLASSES[cls]
    return base, (None if focal is None else (focal, FOCAL_FRACTION))


def write_hard_report(cls: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str:
    dx, base, _, focal_findings, sites, stages = HARD_CLASSES[cls]
    base_findings = CLASS_INFO[base][1]
    chosen = [surface(f, synonyms, rng) for f in rng.sample(base_findings, rng.randint(2, 3))]
    site = rng.choice(sites)
    micro = f"Microscopic description: Sections show {chosen[0]} and {chosen[1]}."
    if len(chosen) > 2:
        micro += f" There is also {chosen[2]}."
    if focal_findings:
        focal = [surface(f, synonyms, rng) for f in focal_findings]
        micro += f" A separate focus shows {' with '.join(focal)}."
    elif cls in _ABSENT and rng.random() < 0.6:
        micro += f" No {rng.choice(_ABSENT[cls])} is identified."
    lines = [f"Specimen: {site}, {rng.choice(PROCEDURES)}.", micro]
    dx_text = surface(dx, synonyms, rng) if rng.random() < 0.5 else dx
    lines.append(f"Diagnosis: {dx_text}" + (f", {rng.choice(stages)}." if stages else "."))
    return "\n".join(lines)


def write_hard_kg(base_kg_path: str, out_path: str) -> str:
    """The base pathology KG JSON with the hard task's entities and relations added → out_path."""
    from pathreasoner_jax.core.io import write_json
    with open(base_kg_path) as f:
        kg = json.load(f)
    with open(KG_EXTENSION) as f:
        ext = json.load(f)
    known = {e["name"] for e in kg["entities"]}
    kg["entities"] = kg["entities"] + [e for e in ext["entities"] if e["name"] not in known]
    kg["relations"] = kg["relations"] + ext["relations"]
    kg["name"] = kg.get("name", "pathology KG") + " + hard demo task"
    write_json(out_path, kg)
    return out_path
