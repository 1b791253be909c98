"""The harder demo task (data_prep/demo/hard.py): reports that link to their own diagnosis
with the focal findings and KG paths from those findings, and slides whose focus is the
only difference from the base tissue."""
import random

import numpy as np
import pytest

from data_prep.demo.hard import FOCAL_FRACTION, HARD_CLASSES, render_spec, write_hard_kg, write_hard_report
from data_prep.demo.synth import render
from data_prep.kg import DEMO_KG, load_pathology_graph
from data_prep.linking import EntityLinker
from data_prep.trajectories import analyse_report, ranked_paths


@pytest.fixture(scope="module")
def hard_kg(tmp_path_factory):
    return load_pathology_graph(write_hard_kg(DEMO_KG, str(tmp_path_factory.mktemp("kg") / "kg.json")))


def test_reports_link_diagnosis_and_focal_findings_with_paths(hard_kg):
    linker = EntityLinker(hard_kg)
    synonyms = {hard_kg.name(n): hard_kg.synonyms(n) for n in hard_kg.nodes()}
    by_name = hard_kg.nodes_by_name()
    for cls, (dx, _, _, focal, _, _) in HARD_CLASSES.items():
        for k in range(6):
            ev = analyse_report(linker, write_hard_report(cls, random.Random(f"{cls}:{k}"), synonyms))
            assert hard_kg.name(ev.diagnosis) == dx
            assert {by_name[f] for f in focal} <= set(ev.findings), (cls, k)
            paths = ranked_paths(hard_kg, ev)
            assert all(by_name[f] in paths for f in focal), (cls, "a focal finding without a KG path")


def test_confusable_partners_share_the_base_and_differ_in_the_focus():
    bases = {}
    for cls, (_, base, focal, findings, _, _) in HARD_CLASSES.items():
        bases.setdefault(base, []).append((cls, focal, tuple(findings)))
    # every base tissue but squamous has a partner, and partners differ in the focus only
    assert sorted(len(v) for v in bases.values()) == [1, 2, 2, 3]
    for group in bases.values():
        assert len({f for _, f, _ in group}) == len(group)


def test_focus_is_the_only_difference_from_the_base_slide():
    size = (384, 320)
    for cls in ("tubular_adenoma", "mucinous_adenocarcinoma", "nodal_squamous"):
        base, focal = render_spec(cls)
        with_focus = render(base, size, np.random.default_rng(7), 0.6, focal=focal)
        plain = render(base, size, np.random.default_rng(7), 0.6)
        tissue = np.any(plain != (242, 242, 244), axis=-1)
        changed = np.any(with_focus != plain, axis=-1)
        assert not np.any(changed & ~tissue)  # nothing outside the tissue
        frac = changed.sum() / tissue.sum()
        assert 0.03 < frac <= FOCAL_FRACTION + 0.02, (cls, frac)
