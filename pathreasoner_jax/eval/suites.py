"""Closed-ended benchmark suites in `eval`: SlideBench-VQA CSV and WSI-VQA JSON (SPEC §8).

Each item's `Slide` must name a slide of the prepared slide store (features prepared by
`pathreasoner prepare`/`features`); items whose slide is absent are counted under
`missing_slides` and left out of the accuracy.
"""
from __future__ import annotations

import os

from pathreasoner_jax.records import SampleRecord


def _as_samples(items, prompt_fn, slides) -> tuple[list, list]:
    rows, kept = [], []
    for it in items:
        sid = os.path.splitext(os.path.basename(str(it.slide)))[0]
        if sid not in slides:
            continue
        rows.append(SampleRecord(f"bench-{it.id}", sid, "test", prompt_fn(it) + "\n<image>", [], [], it.answer))
        kept.append(it)
    return rows, kept


def run_suites(rt) -> dict:
    from pathreasoner_jax.data.prompts import PromptBuilder
    from pathreasoner_jax.data.store import SampleSource, SlideStore, load_entities
    from pathreasoner_jax.eval.runner import final_model, generate
    from pathreasoner_jax.eval.slidebench import build_mc_prompt, load_slidebench_csv, score_slidebench
    from pathreasoner_jax.eval.wsivqa import load_wsivqa_json, score_wsivqa, wsivqa_prompt

    cfg = rt.cfg.eval
    suites = []
    if cfg.slidebench_csv:
        suites.append(("slidebench", load_slidebench_csv(cfg.slidebench_csv),
                       lambda it: build_mc_prompt(it.question, it.options), score_slidebench))
    if cfg.wsivqa_json:
        suites.append(("wsivqa", load_wsivqa_json(cfg.wsivqa_json), wsivqa_prompt, score_wsivqa))
    if not suites:
        return {}
    slides = SlideStore(rt.layout.prep_dir)
    prepared = [(name, *_as_samples(items, prompt_fn, slides), items, score_fn)
                for name, items, prompt_fn, score_fn in suites]
    builder = PromptBuilder(rt, SampleSource(rt.layout.prep_dir, "train"), slides, load_entities(rt.layout.prep_dir),
                            extra_rows=[r for _, rows, *_ in prepared for r in rows])
    model, _ = final_model(rt)
    out = {}
    for name, rows, kept, items, score_fn in prepared:
        texts, _ = generate(rt, model, builder, rows, [r.slide_id for r in rows], cfg.max_new_tokens,
                            cfg.batch_size, desc=name) if rows else ([], None)
        res = score_fn(kept, texts) if kept else {"accuracy": None, "n": 0}
        res.pop("predictions", None)
        res["missing_slides"] = len(items) - len(kept)
        out[name] = res
    return out
