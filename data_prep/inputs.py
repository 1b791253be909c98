"""What a `prepare` run reads: slide files, precomputed feature files, reports, the KG.

With no inputs configured (or `data.demo_corpus: true`) the embedded demo corpus is
generated into the cache (`data.cache_dir`, default `.cache/demo`) and used.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.run_layout import RunLayout
from pathreasoner_jax.slides.reader import SLIDE_EXTENSIONS, slide_id_of
from data_prep.reports import is_conversation_json, load_reports

log = logging.getLogger(__name__)
FEATURE_EXTENSIONS = (".h5", ".hdf5", ".csv")


@dataclass(frozen=True)
class SlideItem:
    slide_id: str
    path: str
    kind: str  # "slide" | "features"


@dataclass
class PrepInputs:
    prep_dir: str
    items: list[SlideItem]
    reports: dict[str, dict] = field(default_factory=dict)
    reports_path: str = ""
    reference_path: str = ""  # conversation JSON imported as samples
    kg_path: str = ""
    kg_format: str = "pathology"
    demo: bool = False
    duplicates: list[dict] = field(default_factory=list)


def demo_requested(cfg) -> bool:
    flag = cfg.data.demo_corpus
    if flag is not None:
        return bool(flag)
    d = cfg.data
    return not (d.slides_dir or d.features_dir or d.reports_path)


def list_files(folder: str, exts: tuple[str, ...]) -> list[str]:
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: folder not found")
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if f.lower().endswith(exts) and not f.startswith(".")]
    return sorted(out)


def collect_items(slides_dir: str, features_dir: str) -> tuple[list[SlideItem], list[dict]]:
    """Sorted by slide id; a feature file wins over a slide of the same id (no re-encoding)."""
    by_id: dict[str, SlideItem] = {}
    dups = []
    for folder, exts, kind in ((features_dir, FEATURE_EXTENSIONS, "features"), (slides_dir, SLIDE_EXTENSIONS, "slide")):
        if not folder:
            continue
        for p in list_files(folder, exts):
            sid = slide_id_of(p)
            if sid in by_id:
                if by_id[sid].kind == kind:
                    dups.append({"path": p, "error": f"{p}: duplicate slide id {sid!r} (also {by_id[sid].path})"})
                continue
            by_id[sid] = SlideItem(sid, p, kind)
    return [by_id[k] for k in sorted(by_id)], dups


def resolve_inputs(cfg) -> PrepInputs:
    d = cfg.data
    slides_dir, reports_path, kg_path = d.slides_dir, d.reports_path, d.kg_path
    demo = demo_requested(cfg)
    if demo:
        from data_prep.demo.corpus import generate_demo_corpus
        from data_prep.demo.fetch import fetch_cmu_small_region
        cache = d.cache_dir or os.path.join(".cache", "demo")
        n = int(d.demo_num_slides)
        seed = (d.demo_seed if d.demo_seed >= 0 else cfg.run.seed)
        try:
            cmu = fetch_cmu_small_region(cache)
        except UserError as e:  # offline: the synthetic slides alone still make a corpus
            log.warning("demo corpus without CMU-1-Small-Region: %s", e)
            print(f"pathreasoner prepare: warning: {e}", flush=True)
            cmu = ""
        task = d.demo_task
        if task != "basic" and d.kg_format != "pathology":
            raise UserError(f"data.demo_task={task} extends a pathology-graph KG; data.kg_format is {d.kg_format!r}")
        name = f"corpus-s{seed}-n{n}" if task == "basic" else f"corpus-{task}-s{seed}-n{n}"
        corpus = generate_demo_corpus(os.path.join(cache, name), n, seed, kg_path=d.kg_path, cmu_slide=cmu,
                                      task=task)
        slides_dir, reports_path = corpus["slides_dir"], corpus["reports_path"]
        if task != "basic":  # the reports name the task's own entities: its KG (the demo KG + extension)
            kg_path = corpus["kg_path"]
    items, dups = collect_items(slides_dir, d.features_dir)
    if not items:
        raise UserError(f"no slide or feature files found (data.slides_dir={slides_dir!r}, "
                        f"data.features_dir={d.features_dir!r})")
    reports, reference = {}, ""
    if reports_path:
        if is_conversation_json(reports_path):
            reference = reports_path
        else:
            reports = load_reports(reports_path)
    return PrepInputs(prep_dir=RunLayout(cfg).prep_dir, items=items, reports=reports, reports_path=reports_path,
                      reference_path=reference, kg_path=kg_path, kg_format=d.kg_format, demo=demo,
                      duplicates=dups)
