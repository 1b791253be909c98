"""`pathreasoner bench prep-scale`: data preparation and the reward lexicon at PrimeKG's size.

On a PrimeKG-shaped synthetic `kg.csv` (`data_prep.kg_synthetic`; `bench.kg_nodes` nodes,
`bench.kg_edges` rows, full size by default) it measures, in one process:
- writing the synthetic file (not part of a user's run; reported for context);
- KG load: streaming the CSV into the array graph (cold, in a child process, whose peak
  RSS is reported: the loader's own memory), and from its .npz cache (warm);
- entity linking over synthetic reports that name KG entities (reports/s);
- path search between linked findings and diagnoses, MedReason's cap of 50 (pairs/s,
  median and p99 latency);
- the lexicon of the reward (`data_prep.entities.build_entities` with the corpus
  entities) and its device arrays: the compiled token-pattern table, and the per-prompt
  entity context at `bench.batch` prompts (bytes; no |V|×|V| matrix);
- the store (`benchmarks/prep_store.py`): trajectory and shard writing, the SFT loader's
  samples/s with and without grain workers, and a 45k-patch slide read whole vs chunked.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import process_max_rss_bytes


_COLD_LOAD = """import sys
from data_prep.kg_primekg import load_primekg
load_primekg(sys.argv[1], cache_dir=sys.argv[2])
with open("/proc/self/status") as f:
    print(next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:")))
"""


def _report(rng: random.Random, kg, findings: list, diagnoses: list) -> tuple[str, int, list]:
    """A short report naming a diagnosis and 2–4 findings of the graph, with filler words."""
    d = rng.choice(diagnoses)
    fs = rng.sample(findings, rng.randint(2, 4))
    words = ["sections show", "there is", "with focal", "and", "no evidence of necrosis;", "consistent with"]
    text = ". ".join(f"{rng.choice(words)} {kg.name(f)}" for f in fs) + f". Diagnosis: {kg.name(d)}."
    return text, d, fs


def bench_prep_scale(cfg, work_dir: str = "") -> dict:
    from data_prep.entities import build_entities
    from data_prep.kg_primekg import load_primekg
    from data_prep.kg_synthetic import synthetic_primekg
    from data_prep.linking import EntityLinker
    from data_prep.paths import find_paths
    from pathreasoner_jax.data.store import Entities

    b = cfg.bench
    tmp = tempfile.TemporaryDirectory() if not work_dir else None
    root = work_dir or tmp.name
    path = os.path.join(root, "kg.csv")
    out: dict = {"kg_nodes_requested": b.kg_nodes, "kg_rows_requested": b.kg_edges}
    t = time.perf_counter()
    info = synthetic_primekg(path, b.kg_nodes, b.kg_edges, seed=cfg.run.seed)
    out["synthetic"] = dict(info, write_s=round(time.perf_counter() - t, 2), csv_bytes=os.path.getsize(path))
    cache = os.path.join(root, "cache")
    # the cold load in a child process of its own, so its peak RSS is the loader's alone
    # (this process already holds the generator's arrays); it also writes the cache. The
    # child reports its own VmHWM: getrusage(RUSAGE_CHILDREN) would count the parent's
    # pages the child held between fork and exec.
    t = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", _COLD_LOAD, path, cache], check=True, capture_output=True,
                           text=True)
    out["kg_load_cold_s"] = round(time.perf_counter() - t, 2)
    out["kg_load_cold_peak_rss_bytes"] = int(child.stdout.split()[-1])
    t = time.perf_counter()
    kg = load_primekg(path, cache_dir=cache)
    out["kg_load_cached_s"] = round(time.perf_counter() - t, 2)
    out["kg"] = {"nodes": kg.num_nodes(), "directed_edges": kg.num_edges(), "max_degree": int(kg.degrees.max()),
                 "median_degree": float(np.median(kg.degrees))}

    rng = random.Random(cfg.run.seed)
    findings = [i for i in kg.nodes() if kg.type(i) == "finding" and kg.degree(i) > 0]
    diagnoses = [i for i in kg.nodes() if kg.type(i) == "diagnosis" and kg.degree(i) > 0]
    t = time.perf_counter()
    linker = EntityLinker(kg)
    out["linker_build_s"] = round(time.perf_counter() - t, 2)
    reports = [_report(rng, kg, findings, diagnoses) for _ in range(b.scale_reports)]
    t = time.perf_counter()
    linked = [linker.link(text) for text, _, _ in reports]
    dt = time.perf_counter() - t
    hits = sum(d in {m.node for m in ms} for (_, d, _), ms in zip(reports, linked))
    out["linking"] = {"reports": len(reports), "reports_per_s": round(len(reports) / dt, 1),
                      "diagnosis_recall": hits / max(len(reports), 1)}

    pairs = [(f, d) for _, d, fs in reports for f in fs][:b.scale_pairs]
    lat = []
    found = 0
    for f, d in pairs:
        t = time.perf_counter()
        found += bool(find_paths(kg, f, d))
        lat.append(time.perf_counter() - t)
    lat = np.asarray(lat)
    out["path_search"] = {"pairs": len(pairs), "pairs_per_s": round(len(pairs) / lat.sum(), 1),
                          "median_ms": round(1e3 * float(np.median(lat)), 2),
                          "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 2), "connected": found}

    corpus = {kg.name(i) for _, d, fs in reports for i in [d, *fs]}
    t = time.perf_counter()
    ents = Entities(build_entities(kg, corpus))
    out["lexicon"] = {"build_s": round(time.perf_counter() - t, 2), "entities": len(ents.names),
                      "similarity_pairs": len(ents["similarity"]), "corpus_entities": len(corpus)}
    gt = [[ents.index[kg.name(i).lower()] for i in [d, *fs]] for _, d, fs in reports[:max(b.batch, 1)]]
    ctx = ents.context(gt, k=8, m=cfg.rewards.max_near)
    out["reward_context_bytes"] = int(sum(v.nbytes for v in ctx.values()))
    out["reward_found_bytes_per_row"] = len(ents.names) + 1  # entities_found's (B, E+1) bool
    out["dense_similarity_bytes_avoided"] = 4 * len(ents.names) ** 2
    out.update(_lexicon_arrays(ents))
    from benchmarks.prep_store import bench_store
    out["store"] = bench_store(cfg, root)
    out["peak_rss_bytes"] = process_max_rss_bytes()
    if tmp is not None:
        tmp.cleanup()
    return out


def _lexicon_arrays(ents) -> dict:
    """The reward's compiled token-pattern table for this lexicon with the demo tokenizer
    (GPT-2-style byte BPE; a Qwen tokenizer adds up to ~12× the patterns, one per merged
    punctuation prefix)."""
    from pathreasoner_jax.grpo.rewards import compile_lexicon
    from pathreasoner_jax.tokenizer import train_demo_tokenizer, load_tokenizer
    with tempfile.TemporaryDirectory() as d:
        train_demo_tokenizer(ents.names[:2000], d, vocab_size=2000)
        tok = load_tokenizer(d)
    surfaces = [(s, i) for i, e in enumerate(ents["entities"]) for s in [e["name"], *e.get("synonyms", [])]]
    t = time.perf_counter()
    lex = compile_lexicon(tok, surfaces, len(ents.names))
    nbytes = sum(int(np.asarray(x).nbytes) for x in (lex.pat_ul, lex.meta_u, lex.ent_uk, lex.keys_u))
    return {"lexicon_compile_s": round(time.perf_counter() - t, 2), "lexicon_patterns": int(lex.pat_ul.shape[0]),
            "lexicon_device_bytes": nbytes}
