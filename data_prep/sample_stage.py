"""Per-slide samples with a resumable cache: report → linked evidence → KG paths →
writer (+ augmentation) → quality filter → SampleRecords, cached atomically as
`<out>/<slide_id>.json` so a rerun never calls the reasoning endpoint twice for a
trajectory it has. A failed writer call is recorded for its sample only (with
`writer_failure`: the failure's kind) and the slide's other samples carry on; a rerun
keeps the cached samples and calls the writer again for those failed inputs alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

from pathreasoner_jax.records import SampleRecord
from pathreasoner_jax.core.io import remove_stale_tmp, write_json
from data_prep.kg import KnowledgeGraph
from data_prep.linking import EntityLinker
from data_prep.trajectories import (SampleError, analyse_report, make_inputs, quality_problem, ranked_paths,
                                    sample_entities)
from data_prep.writers import WriterError


@dataclass
class SampleContext:
    kg: KnowledgeGraph
    linker: EntityLinker
    writer: object  # TemplateWriter | OpenAIWriter
    augment: int = 2
    max_paths: int = 50
    top_k: int = 3
    reports_path: str = ""
    kg_hash: str = ""


def _key(ctx: SampleContext, report: dict, split: str) -> str:
    blob = json.dumps([report, split, ctx.augment, ctx.max_paths, ctx.top_k, ctx.writer.name, ctx.kg_hash,
                       getattr(ctx.writer, "model", "")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def samples_for(slide_id: str, report: dict, split: str, ctx: SampleContext, out_dir: str,
                force: bool = False) -> tuple[list[SampleRecord], list[dict], str]:
    """→ (samples, failures [{slide_id, sample, error, writer_failure (its kind, for a failed
    writer call only)}], diagnosis label or "")."""
    out = os.path.join(out_dir, slide_id + ".json")
    remove_stale_tmp(out)
    key = _key(ctx, report, split)
    redo = keep = None
    if os.path.isfile(out) and not force:
        try:
            with open(out) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                kept = [SampleRecord(**s) for s in cached["samples"]]
                redo = {fl["sample"] for fl in cached["failures"] if fl.get("writer_failure")}
                if not redo:
                    return kept, cached["failures"], cached["label"]
                keep = (kept, [fl for fl in cached["failures"] if not fl.get("writer_failure")])
        except (ValueError, KeyError, TypeError):
            redo = keep = None
    samples, failures, label = _build(slide_id, report, split, ctx, redo, keep)
    write_json(out, {"key": key, "label": label, "failures": failures,
                     "samples": [dataclasses.asdict(s) for s in samples]})
    return samples, failures, label


def _build(slide_id: str, report: dict, split: str, ctx: SampleContext, redo: set | None = None,
           keep: tuple | None = None):
    """`redo`/`keep`: only the inputs named in `redo` go to the writer; `keep` holds the
    (samples, failures) of a cached earlier run, kept as they were."""
    where = f"report for slide {slide_id}" + (f" ({ctx.reports_path})" if ctx.reports_path else "")
    try:
        ev = analyse_report(ctx.linker, report["report"], report.get("diagnosis", ""))
        paths = ranked_paths(ctx.kg, ev, ctx.max_paths, ctx.top_k)
    except SampleError as e:
        return [], [{"slide_id": slide_id, "sample": f"{slide_id}::0", "error": f"{where}: {e}"}], ""
    label = ctx.kg.name(ev.diagnosis)
    # augmentation only for training: val/test keep one canonical trajectory per slide
    inputs = make_inputs(ctx.kg, ev, paths, slide_id, report["report"], ctx.augment if split == "train" else 0)
    order = {i.key: n for n, (i, _) in enumerate(inputs)}
    if redo is not None:
        inputs = [(i, q) for i, q in inputs if i.key in redo]
    trajs = ctx.writer.write_many([i for i, _ in inputs])
    samples, failures = (list(keep[0]), list(keep[1])) if keep else ([], [])
    seen = {(tuple(s.findings), tuple(s.reasoning), s.answer) for s in samples}
    for (inp, question), traj in zip(inputs, trajs):
        sid = inp.key
        if isinstance(traj, WriterError):
            failures.append({"slide_id": slide_id, "sample": sid, "error": f"{where}: {traj}",
                             "writer_failure": getattr(traj, "kind", "error")})
            continue
        problem = quality_problem(ctx.linker, traj, inp)
        if problem:
            failures.append({"slide_id": slide_id, "sample": sid, "error": f"{where}: quality filter: {problem}"})
            continue
        sig = (tuple(traj.findings), tuple(traj.reasoning), traj.answer)
        if sig in seen:
            continue  # an augmentation that came out identical to an earlier variant
        seen.add(sig)
        q = report.get("question") or question
        samples.append(SampleRecord(sample_id=sid, slide_id=slide_id, split=split, question=q,
                                    findings=traj.findings, reasoning=traj.reasoning, answer=traj.answer,
                                    diagnosis=label, entities=sample_entities(ctx.linker, traj),
                                    category="diagnosis"))
    samples.sort(key=lambda s: order.get(s.sample_id, len(order)))  # kept and new in input order
    return samples, failures, label
