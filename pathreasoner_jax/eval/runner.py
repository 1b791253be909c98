"""`pathreasoner eval`: greedy generation on a held-out split, metrics and comparisons.

Models evaluated (each when available): `untrained` (the random initialisation, the
baseline for format compliance), `sft` (the last finished SFT stage) and `grpo`. The
final model (grpo, else sft) is also run with shuffled slide features — each sample
gets another sample's slide — to show that answers depend on the slide. The top-level
keys of metrics.json are the final model's (SPEC §9); `models` holds every model's and
`comparisons` the three checks of the end-to-end demo.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from pathreasoner_jax.checkpoint import restore_params
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.progress import track
from pathreasoner_jax.data.prompts import PromptBuilder
from pathreasoner_jax.eval.metrics import compute_metrics
from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.grpo.reward_fn import make_reward_fn
from pathreasoner_jax.runtime import Runtime
from pathreasoner_jax.text.decode import completion_texts

log = logging.getLogger(__name__)


def generate(rt: Runtime, model, builder: PromptBuilder, rows, slide_ids, max_new: int, batch_size: int,
             reward_fn=None, desc: str = "eval", params: SamplingParams | None = None):
    """Completions (texts; greedy unless `params` say otherwise) and, with `reward_fn`,
    their total rewards. Sampling keys are fixed, so reruns give the same numbers."""
    params = params or SamplingParams(max_new_tokens=max_new, greedy=True)
    texts, rewards = [], []
    for i in track(range(0, len(rows), batch_size), desc, enabled=rt.cfg.run.progress, unit="batch"):
        chunk, sids = rows[i:i + batch_size], slide_ids[i:i + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n)  # one compiled shape
        sids = sids + [sids[-1]] * (batch_size - n)
        prompts = builder.batch_rows(chunk, sids)
        out = sample(model, prompts["ids"], prompts["text_valid"], prompts["features"], prompts["patch_valid"],
                     jax.random.key(i), params=params, eos_id=rt.ids.eos, pad_id=rt.ids.pad)
        g = params.group_size
        texts += completion_texts(rt.tokenizer, out["tokens"], out["mask"])[:n * g]
        if reward_fn is not None:
            rewards += np.asarray(reward_fn(out, prompts, params.group_size)["total"])[:n * g].tolist()
    return texts, rewards


def evaluate_model(rt, model, builder, rows, slide_ids, lexicon, reward_fn, desc,
                   sampled_reward_fn=None) -> tuple[dict, list[str]]:
    """Greedy metrics; with `sampled_reward_fn` also the policy's expected reward,
    `reward_mean_sampled`: eval.reward_samples completions per prompt at GRPO's temperature."""
    cfg = rt.cfg.eval
    texts, rewards = generate(rt, model, builder, rows, slide_ids, cfg.max_new_tokens, cfg.batch_size,
                              reward_fn, desc)
    refs = [s.trajectory for s in rows]
    # BLEU/ROUGE over the whole reasoning text: the answers alone are a few words
    metrics = compute_metrics(texts, refs, [s.category for s in rows], lexicon,
                              reference_entities=[set(s.entities) for s in rows], text_span="full")
    metrics["reward_mean"] = float(np.mean(rewards)) if rewards else None
    if cfg.judge:  # judged accuracy through the endpoint of rewards.judge_*
        from pathreasoner_jax.text.spans import extract_answer
        from pathreasoner_jax.grpo.judge import Judge
        judge = Judge.from_config(rt.cfg.rewards, cache_path=rt.layout.judge_cache)
        try:
            scores = judge.score_batch([s.question for s in rows], [s.answer for s in rows],
                                       [extract_answer(t) for t in texts])
        finally:
            judge.close()
        metrics["answer_accuracy_judge"] = float(np.mean(scores))  # a failed call scored 0
        metrics["judge_failures"] = judge.failure_counts()  # kind → calls
    if sampled_reward_fn is not None:
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=rt.cfg.grpo.temperature,
                                top_p=rt.cfg.grpo.top_p, top_k=rt.cfg.grpo.top_k, group_size=cfg.reward_samples)
        _, sampled = generate(rt, model, builder, rows, slide_ids, cfg.max_new_tokens, cfg.batch_size,
                              sampled_reward_fn, f"{desc} (sampled)", params)
        metrics["reward_mean_sampled"] = float(np.mean(sampled))
    return metrics, texts


def shuffled_slide_ids(true_ids: list[str], seed: int) -> list[str]:
    """The shuffled-slide control: row i gets row perm[i]'s slide, never its own position's."""
    perm = np.random.default_rng(seed).permutation(len(true_ids))
    n = len(true_ids)
    return [true_ids[(j + 1) % n] if j == i else true_ids[j] for i, j in enumerate(perm)]


def final_model(rt: Runtime):
    """→ (the last trained model, its checkpoint): GRPO's, else the last SFT stage's."""
    path = rt.layout.final_checkpoint()
    if not os.path.isdir(path):
        raise UserError(f"{path}: checkpoint directory does not exist (train the model first: `pathreasoner sft`)")
    model = rt.build_model()
    try:
        restore_params(path, model)
    except ValueError as e:
        raise UserError(str(e)) from None
    return model, path


def run_evaluation(rt: Runtime, limit: int | None = None) -> dict:
    from pathreasoner_jax.data.store import SampleSource, SlideStore, load_entities

    cfg = rt.cfg
    layout = rt.layout
    samples = SampleSource(layout.prep_dir, cfg.eval.split)
    if len(samples) == 0:
        raise UserError(f"{layout.prep_dir}: split {cfg.eval.split!r} is empty")
    rows = [samples[i] for i in range(len(samples) if limit is None else min(limit, len(samples)))]
    entities = load_entities(layout.prep_dir)
    slides = SlideStore(layout.prep_dir)
    builder = PromptBuilder(rt, samples, slides, entities)
    judge_model = None
    if cfg.rewards.semantic == "self":  # GRPO's judge: the frozen SFT model
        judge_model = rt.build_model()
        restore_params(layout.grpo_init(), judge_model)
    reward_fn = make_reward_fn(rt, entities, builder, judge_model)
    sampled_fn = reward_fn if cfg.eval.reward_samples > 0 else None
    lexicon = entities["entities"]
    true_ids = [s.slide_id for s in rows]
    shuffled_ids = shuffled_slide_ids(true_ids, cfg.run.seed)
    results, outputs = {}, {}
    ckpts = {"untrained": None, **layout.trained_checkpoints()}
    if len(ckpts) == 1:
        raise UserError(f"{layout.path('checkpoints')}: no SFT or GRPO checkpoint to evaluate (run `pathreasoner sft`)")
    final = "grpo" if "grpo" in ckpts else "sft"
    for name, path in ckpts.items():
        model = rt.build_model()
        if path:
            restore_params(path, model)
        results[name], outputs[name] = evaluate_model(rt, model, builder, rows, true_ids, lexicon, reward_fn, name,
                                                      sampled_fn if name != "untrained" else None)
        if name == final:
            results[f"{name}_shuffled_slides"], _ = evaluate_model(rt, model, builder, rows, shuffled_ids, lexicon,
                                                                   reward_fn, f"{name} (shuffled slides)")
    n_classes = len({s.answer for s in rows})
    comparisons = {
        "format_compliance_sft": results["sft"]["format_compliance"] if "sft" in results else None,
        "format_compliance_untrained": results["untrained"]["format_compliance"],
        "answer_accuracy_true_slides": results[final]["answer_accuracy"],
        "answer_accuracy_shuffled_slides": results[f"{final}_shuffled_slides"]["answer_accuracy"],
        "answer_accuracy_chance": 1.0 / max(n_classes, 1),
    }
    # GRPO maximises the expected reward of the sampling policy, so that is what is compared
    # (greedy rewards are in `models`); falls back to greedy when reward_samples is 0
    key = "reward_mean_sampled" if sampled_fn is not None else "reward_mean"
    comparisons["reward_mean_sft"] = results["sft"][key] if "sft" in results else None
    comparisons["reward_mean_grpo"] = results["grpo"][key] if "grpo" in results else None
    comparisons["reward_compared"] = key
    comparisons["grpo_reward_above_sft"] = (None if None in (comparisons["reward_mean_grpo"],
                                                             comparisons["reward_mean_sft"]) else
                                            bool(comparisons["reward_mean_grpo"] > comparisons["reward_mean_sft"]))
    comparisons["slide_matters"] = bool(comparisons["answer_accuracy_true_slides"] >
                                        comparisons["answer_accuracy_shuffled_slides"])
    out = dict(results[final])
    out.update(model=final, split=cfg.eval.split, models=results, comparisons=comparisons,
               examples=[{"sample_id": s.sample_id, "reference": s.trajectory, "prediction": p}
                         for s, p in zip(rows[:5], outputs[final][:5])])
    return out
