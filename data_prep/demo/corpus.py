"""The embedded demo corpus (SPEC §6b): synthetic slides of four tissue classes, each with
a pathology report written from the project's KG, plus the real CMU-1-Small-Region slide
(no report: it enters the slide store only).

Deterministic from `seed`: slide i has class i mod 4, its own size, sometimes a 40×
scan (mpp 0.25, so tiling must pick pyramid level 1 for 20×), and a report naming a
random subset of the class's findings (sometimes by a synonym, sometimes misspelt, so
the linker's synonym and fuzzy paths are exercised), a negated finding of another
class, the site and the diagnosis. Generated once into `out_dir` and reused: a
`corpus.json` written last marks a complete corpus.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from data_prep.demo.synth import CLASSES, render, write_pyramid_tiff
from data_prep.demo.vocabulary import CLASS_INFO, PROCEDURES, surface
from pathreasoner_jax.core.io import atomic_path, write_json

CORPUS_VERSION = 1
def write_report(cls: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str:
    dx, findings, sites, stages = CLASS_INFO[cls]
    k = rng.randint(3, min(4, len(findings)))
    chosen = rng.sample(findings, k)
    s = [surface(f, synonyms, rng) for f in chosen]
    site = rng.choice(sites)
    lines = [f"Specimen: {site}, {rng.choice(PROCEDURES)}.",
             f"Microscopic description: Sections show {s[0]} and {s[1]}. There is also {s[2]}."
             + (f" Additional features include {s[3]}." if k > 3 else "")]
    others = sorted({f for c, info in CLASS_INFO.items() if c != cls for f in info[1]} - set(findings))
    if rng.random() < 0.6:
        lines[-1] += f" No {rng.choice(others)} is identified."
    dx_text = surface(dx, synonyms, rng) if rng.random() < 0.5 else dx
    lines.append(f"Diagnosis: {dx_text}" + (f", {rng.choice(stages)}." if stages else "."))
    return "\n".join(lines)


def _make_slide(path: str, cls: str, seed: int, i: int, sizes: tuple[int, int] = (1536, 2560),
                task: str = "basic") -> None:
    rng = np.random.default_rng([seed, i])
    w, h = (int(v) for v in rng.choice(np.arange(sizes[0], sizes[1] + 1, 256), 2))
    if task == "hard":
        from data_prep.demo.hard import render_spec
        base, focal = render_spec(cls)
        img = render(base, (w, h), rng, coverage=float(rng.uniform(0.45, 0.65)), focal=focal)
    else:
        img = render(cls, (w, h), rng, coverage=float(rng.uniform(0.45, 0.65)))
    mpp = 0.5
    if i % 6 == 5:  # a 40× scan: level 0 at 0.25 µm/px; the 20× view is pyramid level 1
        img = np.asarray(Image.fromarray(img).resize((2 * w, 2 * h), Image.BILINEAR))
        mpp = 0.25
    with atomic_path(path) as tmp:
        write_pyramid_tiff(tmp, img, mpp)


def generate_demo_corpus(out_dir: str, num_slides: int = 48, seed: int = 0, kg_path: str = "",
                         cmu_slide: str = "", workers: int = 2, sizes: tuple[int, int] = (1536, 2560),
                         task: str = "basic") -> dict:
    """→ {"slides_dir", "reports_path", "labels": {slide_id: class}, "kg_path"}; reuses a
    complete corpus. kg_path in the result is the KG the reports were written from: the
    given one (or the demo KG), with the hard task's extension merged in (`demo/hard.py`).

    sizes: (min, max) level-0 side at 20× in px (multiples of 256; tests use small ones).
    task: "basic" (the four classes above) or "hard" (`data_prep/demo/hard.py`)."""
    from data_prep.kg import DEMO_KG, load_pathology_graph

    marker = os.path.join(out_dir, "corpus.json")
    want = {"version": CORPUS_VERSION, "num_slides": num_slides, "seed": seed, "cmu": bool(cmu_slide),
            "sizes": list(sizes)}
    if task != "basic":  # basic corpora written before tasks existed stay valid
        want["task"] = task
    if os.path.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if all(done.get(k) == v for k, v in want.items()):
            return done
    slides_dir = os.path.join(out_dir, "slides")
    os.makedirs(slides_dir, exist_ok=True)
    kg_path = kg_path or DEMO_KG
    classes, writer = CLASSES, write_report
    if task == "hard":
        from data_prep.demo.hard import HARD_CLASS_NAMES, write_hard_kg, write_hard_report
        kg_path = write_hard_kg(kg_path, os.path.join(out_dir, "kg.json"))
        classes, writer = HARD_CLASS_NAMES, write_hard_report
    elif task != "basic":
        raise ValueError(f"demo task {task!r}: choose basic or hard")
    kg = load_pathology_graph(kg_path)
    synonyms = {kg.name(n): kg.synonyms(n) for n in kg.nodes()}
    jobs, reports, labels = [], [], {}
    for i in range(num_slides):
        cls = classes[i % len(classes)]
        sid = f"demo-{i:03d}"
        path = os.path.join(slides_dir, sid + ".tiff")
        labels[sid] = cls
        reports.append({"slide_id": sid, "report": writer(cls, random.Random(f"{seed}:{i}"), synonyms)})
        if not os.path.isfile(path):
            jobs.append((path, cls, seed, i, tuple(sizes), task))
    with ThreadPoolExecutor(max(1, workers)) as ex:
        list(ex.map(lambda j: _make_slide(*j), jobs))
    if cmu_slide:
        dst = os.path.join(slides_dir, os.path.basename(cmu_slide))
        if not os.path.isfile(dst):
            with atomic_path(dst) as tmp:
                shutil.copyfile(cmu_slide, tmp)
        labels[os.path.splitext(os.path.basename(cmu_slide))[0]] = "unknown"
    reports_path = os.path.join(out_dir, "reports.jsonl")
    with atomic_path(reports_path) as tmp, open(tmp, "w") as f:
        for r in reports:
            f.write(json.dumps(r) + "\n")
    done = dict(want, slides_dir=slides_dir, reports_path=reports_path, labels=labels, kg_path=kg_path)
    write_json(marker, done)
    return done
