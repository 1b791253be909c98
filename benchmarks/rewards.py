"""`pathreasoner bench rewards`: jitted device rewards vs the reference's approach
(decode each completion, regex, Aho-Corasick, Python LCS — one Python loop per sample).

Both sides compute the same rewards (format, entity Dice, ROUGE-L) on the same token ids;
the device side is timed after a warm-up (compile time reported apart), with the inputs
already on device as the sampler leaves them; each figure is the median of `repeats` runs.
"""
from __future__ import annotations

import random
import statistics
import tempfile
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.torch_baseline import rewards as RT
from pathreasoner_jax.data.store import Entities
from pathreasoner_jax.grpo import rewards as R

DEMO_ENTITIES = ["invasive ductal carcinoma", "ductal carcinoma in situ", "lobular carcinoma", "carcinoma",
                 "lymphovascular invasion", "necrosis", "nuclear pleomorphism", "mitotic figures",
                 "adenocarcinoma", "squamous cell carcinoma", "Gleason pattern 4", "HER2-positive",
                 "tumor-infiltrating lymphocytes", "signet ring cells", "desmoplastic stroma", "perineural invasion",
                 "glandular differentiation", "keratin pearls", "clear cell renal cell carcinoma", "fibrosis"]
DEMO_WORDS = ["the", "tumor", "cells", "show", "with", "and", "of", "atypical", "glands", "stroma", "biopsy",
              "grade", "high", "low", "is", "in", "consistent", "features", "margin", "nuclei", "infiltrating",
              "pattern", "sheets", "focal", "marked", "present", "absent", "suggests", "therefore"]


def _demo_texts(rng: random.Random, n: int, words_per_block: int) -> tuple[list[str], list[str]]:
    def block(k):
        return " ".join(rng.choice(DEMO_ENTITIES) if rng.random() < 0.2 else rng.choice(DEMO_WORDS)
                        for _ in range(k))
    texts, refs = [], []
    for _ in range(n):
        ans = rng.choice(DEMO_ENTITIES)
        texts.append(f"<observe>{block(words_per_block)}</observe>\n<think>{block(2 * words_per_block)}</think>\n"
                     f"<answer>{ans} {block(4)}</answer>")
        refs.append(rng.choice([ans, rng.choice(DEMO_ENTITIES)]) + " " + block(3))
    return texts, refs


def _demo_tokenizer(tmp: str):
    from pathreasoner_jax.tokenizer import load_tokenizer, train_demo_tokenizer
    texts, _ = _demo_texts(random.Random(1), 400, 12)
    return load_tokenizer(train_demo_tokenizer(texts, f"{tmp}/tok", vocab_size=1024))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_rewards(batch_sizes: Sequence[int] = (64, 256, 1024), tok=None, seq_len: int = 256, ref_len: int = 64,
                  repeats: int = 5, python_repeats: Optional[int] = None, seed: int = 0) -> dict:
    """Times both implementations per batch size → {"meta": {...}, "results": [{batch, device_s,
    device_compile_s, python_s, python_no_rouge_s, speedup, ...}, ...]}.

    tok: a tokenizer from `load_tokenizer` (default: a demo BPE trained in a temp dir).
    python_repeats: runs of the slow Python loop (default min(repeats, 3)).
    """
    from pathreasoner_jax.tokenizer import special_ids

    with tempfile.TemporaryDirectory() as tmp:
        tok = tok or _demo_tokenizer(tmp)
    sid = special_ids(tok)
    surfaces = [(s, i) for i, s in enumerate(DEMO_ENTITIES)]
    e = len(DEMO_ENTITIES)
    tables = R.build_token_tables(tok, sid)
    lex = R.compile_lexicon(tok, surfaces, e)
    matcher = RT.entity_matcher(surfaces)
    nrng = np.random.default_rng(seed)
    sim = nrng.uniform(0, 1, (e, e)).astype(np.float32)
    sim = np.maximum(sim, sim.T)
    np.fill_diagonal(sim, 1.0)
    ents = Entities({"entities": [{"name": n} for n in DEMO_ENTITIES],
                     "similarity": [[i, j, float(sim[i, j])] for i in range(e) for j in range(i + 1, e)]})
    eos, pad = tok.convert_ids_to_tokens(sid.eos), tok.convert_ids_to_tokens(sid.pad)
    python_repeats = python_repeats or min(repeats, 3)
    fn = R.compute_rewards  # jitted

    results = []
    for b in batch_sizes:
        texts, refs = _demo_texts(random.Random(seed + b), b, words_per_block=seq_len // 8)
        ids = np.full((b, seq_len), sid.pad, np.int32)
        mask = np.zeros((b, seq_len), np.int32)
        for i, t in enumerate(texts):
            x = (tok.encode(t, add_special_tokens=False) + [sid.eos])[:seq_len]  # long ones are truncated
            ids[i, :len(x)], mask[i, :len(x)] = x, 1
        ref_ids = np.zeros((b, ref_len), np.int32)
        ref_mask = np.zeros((b, ref_len), np.int32)
        for i, r in enumerate(refs):
            x = tok.encode(r, add_special_tokens=False)[:ref_len]
            ref_ids[i, :len(x)], ref_mask[i, :len(x)] = x, 1
        gt_sets = [set(nrng.choice(e, size=3, replace=False).tolist()) for _ in range(b)]
        ctx = {k: jnp.asarray(v) for k, v in ents.context(gt_sets, 3, e).items()}
        dev = [jnp.asarray(ids), jnp.asarray(mask), ctx]
        dref = [jnp.asarray(ref_ids), jnp.asarray(ref_mask)]

        def run_device():
            jax.block_until_ready(fn(dev[0], dev[1], dev[2], tables, lex, dref[0], dref[1]))

        t0 = time.perf_counter()
        run_device()
        compile_s = time.perf_counter() - t0
        device_s = _median_time(run_device, repeats)
        # the twin decodes, so it reads the references as text, as the reference implementation does
        ref_texts = [tok.decode([int(v) for v, m in zip(r, rm) if m]) for r, rm in zip(ref_ids, ref_mask)]

        def run_python(rouge=True):
            if rouge:
                RT.rewards_text(tok, ids, mask, gt_sets, sim, ref_texts, matcher, eos_text=eos, pad_text=pad)
                return
            for i in range(b):  # decode + regex + Aho-Corasick only
                text = RT.decode_completion(tok, ids[i], mask[i])
                RT.format_reward_text(text, eos, pad)
                RT.entity_dice_text(RT.entities_text(text, matcher), gt_sets[i], sim)

        python_s = _median_time(run_python, python_repeats)
        python_nr_s = _median_time(lambda: run_python(False), python_repeats)
        results.append({"batch": b, "device_s": device_s, "device_compile_s": compile_s, "python_s": python_s,
                        "python_no_rouge_s": python_nr_s, "speedup": python_s / device_s,
                        "speedup_no_rouge": python_nr_s / device_s,
                        "mean_completion_tokens": float(mask.sum(1).mean())})
    meta = {"backend": jax.default_backend(), "device": str(jax.devices()[0]), "seq_len": seq_len,
            "ref_len": ref_len, "entities": e, "patterns": int(lex.pat_ul.shape[0]),
            "pattern_max_len": lex.max_len, "vocab": len(tok), "repeats": repeats,
            "python_repeats": python_repeats}
    return {"meta": meta, "results": results}


if __name__ == "__main__":
    import json
    print(json.dumps(bench_rewards(), indent=1))
