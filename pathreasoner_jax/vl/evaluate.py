"""`pathreasoner vl-eval`: MCQ accuracy, overall and per category (PathMMU-style), of a VL
stage's model by greedy decoding, with true images and with shuffled images (each
question shown another record's images: accuracy should fall to chance when the model
reads the image). Results JSON under runs/<name>/vl_eval/<tag>.json.
"""
from __future__ import annotations

import os

import jax

from pathreasoner_jax.core.io import write_json
from pathreasoner_jax.core.progress import Progress
from pathreasoner_jax.eval.metrics import format_compliance
from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.vl.mcq import extract_letter, mcq_metrics
from pathreasoner_jax.vl.stages import MCQPrompts, completions_text, vl_source


def predict(rt, model, prompts: MCQPrompts, batch: int, new_tokens: int, label: str = "") -> list[str]:
    """Greedy completions of every record of `prompts` (the last batch padded by repeats)."""
    n, out = len(prompts.src), []
    params = SamplingParams(max_new_tokens=new_tokens, greedy=True)
    bar = Progress(f"vl-eval {label}".strip(), -(-n // batch), 0, enabled=rt.cfg.run.progress, unit="batch")
    try:
        for s in range(0, n, batch):
            idx = [min(i, n - 1) for i in range(s, s + batch)]
            b = prompts.batch(idx)
            r = sample(model, b["ids"], b["text_valid"], b["features"], b["patch_valid"], jax.random.key(0),
                       params=params, eos_id=rt.ids.eos, pad_id=rt.ids.pad)
            out += completions_text(rt.tokenizer, r)[: min(batch, n - s)]
            bar.update(1)
    finally:
        bar.close()
    return out


def evaluate_vl(rt, checkpoint: str = "", tag: str = "", split: str = "") -> dict:
    v = rt.cfg.vl
    split = split or v.eval_split
    model = rt.build_model(checkpoint)
    src = vl_source(rt, "vl_grpo", split)
    recs = [src[i] for i in range(len(src))]
    results = {"checkpoint": checkpoint or rt.model_dir, "split": split}
    for name, shuffled in (("true_images", False), ("shuffled_images", True)):
        texts = predict(rt, model, MCQPrompts(rt, src, shuffle_images=shuffled, seed=rt.cfg.run.seed),
                        v.eval_batch_size, v.eval_new_tokens, name)
        letters = [extract_letter(t, len(r.options)) for t, r in zip(texts, recs)]
        m = mcq_metrics(letters, [r.answer for r in recs], [r.category for r in recs], [len(r.options) for r in recs])
        m["format"] = format_compliance(texts)
        m["examples"] = [{"source": r.source, "answer": r.answer, "completion": t} for r, t in zip(recs[:4], texts)]
        results[name] = m
    results["open_ended"] = open_ended(rt, model, split)
    out = os.path.join(rt.layout.vl_eval_dir, f"{tag or 'untrained'}.json")
    if jax.process_index() == 0:
        write_json(out, results)
    results["path"] = out
    return results


def open_ended(rt, model, split: str) -> dict:
    """VQA metrics as for slides (eval/metrics.compute_metrics: format, BLEU, ROUGE on the
    whole reply) of the conversation store's last replies; {} without that store."""
    from pathreasoner_jax.core.errors import UserError
    from pathreasoner_jax.eval.metrics import compute_metrics
    try:
        src = vl_source(rt, "vl_sft", split)
    except UserError:
        return {}
    recs = [src[i] for i in range(len(src))]
    texts = predict(rt, model, MCQPrompts(rt, src), rt.cfg.vl.eval_batch_size, rt.cfg.vl.eval_new_tokens,
                    "open-ended")
    refs = [r.conversation[-1]["content"] for r in recs]
    m = compute_metrics(texts, refs, [r.category for r in recs], text_span="full")
    return {k: m[k] for k in ("format_compliance", "bleu4", "rougeL", "n")}


def summary_line(tag: str, r: dict) -> str:
    t, s = r["true_images"], r["shuffled_images"]
    return (f"vl-eval {tag}: MCQ accuracy {t['accuracy']:.3f} with the images, {s['accuracy']:.3f} shuffled "
            f"(chance {t['chance']:.3f}, n={t['n']}); format {t['format']:.2f}; answered {t['answered']:.2f}"
            f" → {r['path']}")


def summary_table(eval_dir: str, tags=("untrained", "pretrain", "sft", "grpo")) -> str:
    """The demo's table: MCQ accuracy per stage with true and with shuffled images."""
    import json
    lines = ["| model | MCQ acc, true images | MCQ acc, shuffled images | chance | format | n |",
             "| --- | --- | --- | --- | --- | --- |"]
    for tag in tags:
        path = os.path.join(eval_dir, f"{tag}.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            r = json.load(f)
        t, s = r["true_images"], r["shuffled_images"]
        lines.append(f"| {tag} | {t['accuracy']:.3f} | {s['accuracy']:.3f} | {t['chance']:.3f} | {t['format']:.2f} "
                     f"| {t['n']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print(summary_table(sys.argv[1]))
