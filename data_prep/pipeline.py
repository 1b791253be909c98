"""`pathreasoner prepare`: parts (one per worker) and the merge.

Worker I of N owns the slides whose position in the sorted slide list is ≡ I (mod N);
it writes `slides-I-of-N` and `samples-<split>-I-of-N` shards plus `parts/part-I-of-N.json`
(its manifest, written last: a finished part is skipped on rerun). Outputs of different
workers never overlap, so a SLURM array or an indexed Kubernetes job can run them on
many machines; `--merge` then writes `entities.json`, the demo tokenizer and
`manifest.json`. Failed reasoning-writer calls are counted by kind (`writer_failures` in
each part manifest and in `manifest.json`); a part with writer failures is not taken as
finished, so a rerun calls the writer again for those samples only (sample_stage.py).
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter, defaultdict

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.data.slide_chunks import encode_slide_records
from pathreasoner_jax.records import SPLITS, encode_sample
from pathreasoner_jax.core.io import remove_stale_tmp, sha256_file, write_json
from data_prep.inputs import PrepInputs
from data_prep.sample_stage import SampleContext, samples_for
from data_prep.shards import SLIDE_WRITER_OPTIONS, shard_name, write_shard
from data_prep.slide_stage import SlideSettings, features_for, slide_record


def say(msg: str) -> None:
    print(f"pathreasoner prepare: {msg}", file=sys.stderr, flush=True)


def part_path(prep_dir: str, part: int, n: int) -> str:
    return os.path.join(prep_dir, "parts", f"part-{part:05d}-of-{n:05d}.json")


def run_part(inp: PrepInputs, cfg, ctx: SampleContext | None, splits: dict[str, str], part: int, n: int,
             config_hash: str, get_encoder, force: bool = False, reference: list | None = None) -> dict:
    """Processes this worker's slides; returns its part manifest."""
    import json

    pp = part_path(inp.prep_dir, part, n)
    if os.path.isfile(pp) and not force:
        with open(pp) as f:
            done = json.load(f)
        listed = [done["shards"]["slides"]] + list(done["shards"]["samples"].values())
        if done.get("config_hash") == config_hash and not done.get("writer_failures") and all(
                os.path.isfile(os.path.join(inp.prep_dir, sh["path"])) for sh in listed):
            return done
    mine = [it for i, it in enumerate(inp.items) if i % n == part]
    for kind in ["slides"] + [f"samples-{sp}" for sp in SPLITS]:  # leftovers of a killed run
        remove_stale_tmp(os.path.join(inp.prep_dir, shard_name(kind, part, n)))
    remove_stale_tmp(pp)
    settings = SlideSettings.from_config(cfg.data, progress=cfg.run.progress)
    feat_dir, samp_dir = os.path.join(inp.prep_dir, "features"), os.path.join(inp.prep_dir, "samples")
    ok, failed, warnings, sample_fail = [], [], [], []
    by_split = defaultdict(list)
    ref_by_slide = defaultdict(list)
    rows = [0]  # next row of the slide shard: a chunked slide takes 1 + K rows
    for s in reference or []:
        ref_by_slide[s.slide_id].append(s)

    def slide_records():
        from pathreasoner_jax.core.progress import track
        for it in track(mine, f"slides (part {part + 1}/{n})", enabled=cfg.run.progress, unit="slide"):
            try:
                ff = features_for(it, settings, get_encoder, feat_dir, force)
            except UserError as e:
                failed.append({"path": it.path, "error": str(e)})
                say(f"skipped {e}")
                continue
            except Exception as e:  # an input no check foresaw must not stop a long batch
                msg = f"{it.path}: unexpected {type(e).__name__} ({' '.join(str(e).split())[:200]})"
                failed.append({"path": it.path, "error": msg})
                say(f"skipped {msg}")
                continue
            if ff.attrs.get("magnification_source") == "default":
                warnings.append({"path": it.path, "warning": f"{it.path}: no mpp or objective power; assumed "
                                 f"{settings.default_magnification:g}×"})
            label = ""
            if ctx is not None and it.slide_id in inp.reports:
                samples, fails, label = samples_for(it.slide_id, inp.reports[it.slide_id],
                                                    splits.get(it.slide_id, "train"), ctx, samp_dir, force)
                for s in samples:
                    by_split[s.split].append(s)
                for fl in fails:
                    say(f"sample skipped: {fl['error']}")
                sample_fail.extend(fails)
            for s in ref_by_slide.get(it.slide_id, []):
                by_split[s.split].append(s)
            records = encode_slide_records(slide_record(it, ff, label), cfg.data.feature_dtype,
                                           cfg.data.slide_chunk_rows)
            ok.append({"slide_id": it.slide_id, "path": it.path, "num_patches": int(len(ff.features)),
                       "label": label, "row": rows[0], "chunks": len(records) - 1 or 1})
            rows[0] += len(records)
            yield from records

    slides_shard = write_shard(os.path.join(inp.prep_dir, shard_name("slides", part, n)), slide_records(),
                               SLIDE_WRITER_OPTIONS)
    sample_shards = {}
    for split in SPLITS:
        recs = sorted(by_split.get(split, []), key=lambda s: s.sample_id)
        sample_shards[split] = write_shard(os.path.join(inp.prep_dir, shard_name(f"samples-{split}", part, n)),
                                           (encode_sample(s) for s in recs))
    manifest = {"part": part, "num_parts": n, "config_hash": config_hash, "slides_ok": ok,
                "slides_failed": failed, "slides_warnings": warnings, "samples_failed": sample_fail,
                "writer_failures": writer_failures(sample_fail),
                "shards": {"slides": slides_shard, "samples": sample_shards}}
    write_json(pp, manifest)
    return manifest


def merge(inp: PrepInputs, cfg, kg, n: int, config_hash: str, reference: list | None = None,
          reference_failures: list | None = None) -> dict:
    import json

    parts = []
    missing = [i for i in range(n) if not os.path.isfile(part_path(inp.prep_dir, i, n))]
    if missing:
        raise UserError(f"merge: parts {missing} of {n} are not finished in {inp.prep_dir}/parts "
                        f"(run those --worker-index values first)")
    for i in range(n):
        with open(part_path(inp.prep_dir, i, n)) as f:
            parts.append(json.load(f))
    stale = [p["part"] for p in parts if p.get("config_hash") != config_hash]
    if stale:
        raise UserError(f"merge: parts {stale} were made with another config; rerun them (or use --force)")
    slides_ok = sorted((s for p in parts for s in p["slides_ok"]), key=lambda s: s["slide_id"])
    slides_failed = inp.duplicates + [f for p in parts for f in p["slides_failed"]]
    samples_failed = [f for p in parts for f in p["samples_failed"]] + list(reference_failures or [])
    have = {s["slide_id"] for s in slides_ok}
    tried = {it.slide_id for it in inp.items}
    for sid in sorted(set(inp.reports) - tried):
        samples_failed.append({"slide_id": sid, "sample": f"{sid}::0",
                               "error": f"{inp.reports_path}: report for slide {sid} has no slide or feature file"})
    for s in reference or []:
        if s.slide_id not in have:
            samples_failed.append({"slide_id": s.slide_id, "sample": s.sample_id,
                                   "error": f"{inp.reference_path}: sample {s.sample_id}: no features for slide {s.slide_id}"})
    slide_shards = [p["shards"]["slides"] for p in parts]
    index = {}
    for k, p in enumerate(parts):
        for row, s in enumerate(p["slides_ok"]):
            index[s["slide_id"]] = [k, s.get("row", row)]
    sample_shards = {sp: [p["shards"]["samples"][sp] for p in parts] for sp in SPLITS}
    counts = {"slides_ok": len(slides_ok), "slides_failed": len(slides_failed),
              "patches": sum(s["num_patches"] for s in slides_ok),
              "samples": {sp: sum(s["records"] for s in sample_shards[sp]) for sp in SPLITS},
              "samples_failed": len(samples_failed)}
    wf = writer_failures(samples_failed)
    counts["writer_failures"] = sum(wf.values())
    from data_prep.entities import write_entities
    from pathreasoner_jax.data.store import iter_samples_from_shards
    samples = list(iter_samples_from_shards(inp.prep_dir, [s["path"] for sp in SPLITS for s in sample_shards[sp]]))
    corpus_entities = {e for s in samples for e in s.entities}
    ents = write_entities(os.path.join(inp.prep_dir, "entities.json"), kg, corpus_entities)
    tokenizer = ""
    if not cfg.model.llm.hf_path:  # no real model: the demo BPE is trained on this corpus
        tokenizer = _train_tokenizer(inp.prep_dir, ents, samples)
    manifest = {
        "version": 1, "config_hash": config_hash, "num_parts": n, "demo": inp.demo,
        "slides_ok": [s["slide_id"] for s in slides_ok], "slides": slides_ok,
        "slides_failed": slides_failed, "slides_warnings": [w for p in parts for w in p["slides_warnings"]],
        "samples": counts["samples"], "samples_failed": samples_failed, "counts": counts,
        "writer_failures": wf,
        "shards": {"slides": slide_shards, "samples": sample_shards}, "slide_index": index,
        "entities": "entities.json", "entities_sha256": sha256_file(os.path.join(inp.prep_dir, "entities.json")),
        "tokenizer": tokenizer, "feature_dim": _feature_dim(inp.prep_dir, slide_shards),
        "encoder": cfg.data.encoder, "target_magnification": cfg.data.target_magnification,
        "patch_size": cfg.data.patch_size, "num_clusters": cfg.data.num_clusters,
    }
    out = os.path.join(inp.prep_dir, "manifest.json")
    remove_stale_tmp(out)
    write_json(out, manifest)
    return manifest


def writer_failures(samples_failed: list[dict]) -> dict[str, int]:
    """kind → failed reasoning-writer calls among `samples_failed`."""
    return dict(Counter(f["writer_failure"] for f in samples_failed if f.get("writer_failure")))


def no_training_samples(manifest: dict, prep_dir: str) -> str:
    """The one-line reason a merge produced no training sample."""
    where = f"(all failures: {prep_dir}/manifest.json samples_failed)"
    failed = manifest["samples_failed"]
    wf = manifest.get("writer_failures") or {}
    if wf:
        kind, k = max(wf.items(), key=lambda kv: kv[1])
        example = next(f["error"] for f in failed if f.get("writer_failure") == kind)
        return (f"no training samples: {sum(wf.values())} reasoning-writer call(s) failed, most often {kind} "
                f"({k} of them), e.g. {example} {where}")
    if failed:
        return f"no training samples: {len(failed)} sample(s) skipped, e.g. {failed[0]['error']} {where}"
    return "no training samples: no report or reference conversation matched a prepared slide"


def _feature_dim(prep_dir: str, slide_shards: list[dict]) -> int:
    from pathreasoner_jax.data.store import read_shard_record
    for sh in slide_shards:
        if sh["records"]:
            return int(read_shard_record(os.path.join(prep_dir, sh["path"]), 0, kind="slide").features.shape[1])
    return 0


def _train_tokenizer(prep_dir: str, ents: dict, samples: list) -> str:
    from pathreasoner_jax.tokenizer import train_demo_tokenizer
    texts = [e["name"] for e in ents["entities"]] + [s for e in ents["entities"] for s in e["synonyms"]]
    texts += [s.question for s in samples] + [s.trajectory for s in samples]
    out = os.path.join(prep_dir, "tokenizer")
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    stamp = os.path.join(out, "corpus.sha256")
    if os.path.isfile(stamp) and open(stamp).read().strip() == digest:
        return "tokenizer"
    train_demo_tokenizer(texts, out)
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return "tokenizer"
