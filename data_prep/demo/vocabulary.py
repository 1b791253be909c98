"""The demo's tissue classes (diagnosis, findings, sites, stages) and how a report names an
entity (canonical, a synonym, or misspelt); shared by the basic corpus and the hard task."""
from __future__ import annotations

import random

CLASS_INFO = {
    "normal_mucosa": ("normal colonic mucosa", ["regular crypt architecture", "goblet cells", "basally located nuclei",
                                               "intact surface epithelium"], ["colon", "rectum"], []),
    "adenocarcinoma": ("colorectal adenocarcinoma", ["irregular glands", "cribriform architecture",
                       "nuclear pleomorphism", "hyperchromatic nuclei", "dirty necrosis", "desmoplastic stroma",
                       "atypical mitoses"], ["colon", "rectum"], ["pT2", "pT3"]),
    "squamous_cell_carcinoma": ("squamous cell carcinoma", ["keratin pearls", "intercellular bridges",
                                "eosinophilic cytoplasm", "polygonal cells", "dyskeratosis", "infiltrative nests",
                                "nuclear pleomorphism"], ["esophagus", "skin", "lung"], ["pT1", "pT2"]),
    "lymphoid": ("reactive lymphoid hyperplasia", ["dense lymphocytic infiltrate", "lymphoid follicles",
                 "germinal centers", "small round lymphocytes", "tingible body macrophages", "plasma cells"],
                 ["lymph node", "tonsil"], []),
}
PROCEDURES = ("biopsy", "resection", "excision")


def surface(name: str, synonyms: dict[str, list[str]], rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3 and synonyms.get(name):
        return rng.choice(synonyms[name])
    if r < 0.4 and len(name) >= 10:  # a typo: swap two interior letters of the longest word
        words = name.split()
        j = max(range(len(words)), key=lambda k: len(words[k]))
        w = words[j]
        if len(w) >= 7:
            k = rng.randrange(2, len(w) - 3)
            words[j] = w[:k] + w[k + 1] + w[k] + w[k + 2:]
            return " ".join(words)
    return name
