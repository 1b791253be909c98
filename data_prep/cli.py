"""Front-ends of `pathreasoner prepare` and `pathreasoner features` (routed here by
`pathreasoner_jax.cli`).

Exit codes: 0 when at least one slide succeeded (bad inputs are reported one line each
and recorded in the manifest), 1 when nothing succeeded, 2 for a usage/config error
(raised as UserError and printed by the CLI without a traceback) and for a merge that,
given reports or reference conversations and a non-zero train fraction, produced no
training sample (the manifest is written first; the line names the failed writer calls
and their commonest kind).
"""
from __future__ import annotations

import logging
import os
import time

from pathreasoner_jax.core.errors import UserError
from data_prep.encoder_factory import lazy_encoder
from pathreasoner_jax.config import load_config


def _logging():
    logging.basicConfig(level=logging.WARNING, format="pathreasoner: %(levelname)s: %(message)s")


def worker_from_env(num_workers, worker_index, unset_index: int) -> tuple[int, int]:
    """(N, I) from the flags, else from the job's environment: a SLURM array
    (SLURM_ARRAY_TASK_COUNT / _ID), SLURM tasks (SLURM_NTASKS / SLURM_PROCID), a TPU VM
    slice (TPU_WORKER_HOSTNAMES, comma-separated / TPU_WORKER_ID), else one worker."""
    n, index = 1, unset_index
    if num_workers is not None:
        n = int(num_workers)
    else:
        env = os.environ
        hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
        for count, idx in ((env.get("SLURM_ARRAY_TASK_COUNT"), env.get("SLURM_ARRAY_TASK_ID")),
                           (env.get("SLURM_NTASKS"), env.get("SLURM_PROCID")),
                           (str(len(hosts)), env.get("TPU_WORKER_ID"))):
            if count and idx and int(count) > 1:
                n, index = int(count), int(idx)
                break
    return n, index if worker_index is None else int(worker_index)


def run_prepare(args) -> int:
    _logging()
    cfg = load_config(args.config, getattr(args, "overrides", []))
    n, i = worker_from_env(args.num_workers, args.worker_index, -1)
    if args.merge and args.num_workers is None:
        i = -1
    return prepare(cfg, num_workers=n, worker_index=i, merge_only=args.merge, force=args.force)


def prepare(cfg, num_workers: int = 1, worker_index: int = -1, merge_only: bool = False, force: bool = False) -> int:
    """Library entry point of `prepare` (tests and the bench call it directly)."""
    from data_prep.inputs import resolve_inputs
    from data_prep.kg import load_kg
    from data_prep.linking import EntityLinker
    from data_prep.pipeline import merge, no_training_samples, run_part, say
    from data_prep.reference import import_conversations
    from data_prep.sample_stage import SampleContext
    from data_prep.splits import assign_splits
    from data_prep.trajectories import SampleError, analyse_report
    from data_prep.writers import WriterError, build_writer

    t0 = time.time()
    n = max(1, int(num_workers))
    if worker_index >= n:
        raise UserError(f"--worker-index {worker_index} is not below --num-workers {n}")
    inp = resolve_inputs(cfg)
    os.makedirs(inp.prep_dir, exist_ok=True)
    kg = load_kg(inp.kg_path, inp.kg_format)
    linker = EntityLinker(kg, fuzzy_threshold=float(cfg.data.fuzzy_threshold))
    config_hash = prep_fingerprint(cfg)
    ctx = None
    if inp.reports:
        try:
            writer = build_writer(cfg.data)
        except WriterError as e:
            raise UserError(str(e)) from None
        ctx = SampleContext(kg, linker, writer, augment=int(cfg.data.augment_per_sample),
                            max_paths=int(cfg.data.max_paths_per_pair),
                            top_k=int(cfg.data.paths_top_k), reports_path=inp.reports_path,
                            kg_hash=_file_hash(kg.source))
    reference, ref_fail = [], []
    if inp.reference_path:
        reference, ref_fail = import_conversations(inp.reference_path, linker)
    labels = {}
    have = {it.slide_id for it in inp.items}
    for sid, rep in inp.reports.items():
        if sid not in have:  # reports without a slide must not take val/test places
            continue
        lab = ""
        if len(inp.reports) <= int(cfg.data.stratify_max):
            try:
                lab = kg.name(analyse_report(linker, rep["report"], rep.get("diagnosis", "")).diagnosis)
            except SampleError:
                pass
        labels[sid] = lab
    splits = assign_splits(labels, cfg.data.splits, cfg.run.seed)
    get_encoder = lazy_encoder(cfg.data.encoder, cfg.data.encoder_weights)
    if not merge_only:
        parts = range(n) if worker_index < 0 else [worker_index]
        for part in parts:
            m = run_part(inp, cfg, ctx, splits, part, n, config_hash, get_encoder, force, reference)
            say(f"part {part + 1}/{n}: {len(m['slides_ok'])} slides ok, {len(m['slides_failed'])} failed")
    if merge_only or worker_index < 0 or n == 1:
        man = merge(inp, cfg, kg, n, config_hash, reference, ref_fail)
        c = man["counts"]
        wf = f" ({c['writer_failures']} failed writer call(s): {man['writer_failures']})" if c["writer_failures"] else ""
        say(f"{c['slides_ok']} slides ok, {c['slides_failed']} failed, samples {c['samples']}, "
            f"{c['samples_failed']} sample(s) skipped{wf} → {inp.prep_dir}/manifest.json ({time.time() - t0:.1f}s)")
        if not c["slides_ok"]:
            return 1
        if (inp.reports or inp.reference_path) and cfg.data.splits[0] > 0 and not c["samples"].get("train"):
            raise UserError(no_training_samples(man, inp.prep_dir))
        return 0
    return 0


# data fields that only the training input pipeline reads: changing them must not
# invalidate prepared shards
_TRAINING_ONLY = ("sample_num", "max_text_len", "length_buckets", "shuffle_seed", "num_workers", "prep_dir")


def prep_fingerprint(cfg) -> str:
    """Hash of what decides the prepared corpus: the data section (less training-only
    fields) and run.seed (split assignment)."""
    import hashlib
    import json
    d = {k: v for k, v in cfg.to_dict()["data"].items() if k not in _TRAINING_ONLY}
    blob = json.dumps({"data": d, "seed": cfg.run.seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_hash(path: str) -> str:
    import hashlib
    if not path or not os.path.isfile(path):
        return ""
    st = os.stat(path)
    return hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def run_features(args) -> int:
    _logging()
    from data_prep.features import extract_folder
    n, i = worker_from_env(args.num_workers, args.worker_index, 0)
    return extract_folder(args.slides, args.out, encoder=args.encoder, weights=args.encoder_weights,
                          magnification=args.magnification, patch_size=args.patch_size,
                          num_workers=n, worker_index=i)
