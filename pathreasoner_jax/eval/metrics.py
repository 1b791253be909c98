"""Open-ended evaluation metrics (SPEC §8): format compliance, answer accuracy (normalised
exact match), BLEU-1..4, ROUGE-1/2/L, KG-entity precision/recall/F1, per-category tables.

Inputs are decoded completions that KEEP the format tags (decode with the tags; they are
special tokens, so `skip_special_tokens=True` would delete them). Trailing end-of-turn
tokens (`<|im_end|>`, `<|endoftext|>`) are ignored: the completion mask includes the EOS.

Library choices:
- BLEU: sacrebleu (`BLEU(max_ngram_order=n)`, corpus-level, 13a tokenisation, lowercased,
  default `exp` smoothing). Chosen over nltk because its tokenisation is fixed and reported
  in a signature (scores are comparable across papers and runs), it needs no tokenizer data
  download, and it computes corpus BLEU directly. BLEU-n is the usual captioning BLEU-n:
  brevity penalty × geometric mean of the 1..n-gram precisions, uniform weights. Reported
  in [0, 1] (sacrebleu's 0–100 divided by 100) like every other metric here.
- ROUGE: rouge-score (`use_stemmer=True`; its tokenizer lowercases and keeps [a-z0-9]),
  F-measure per sample, averaged over samples.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from typing import Iterable, Optional, Sequence

from pathreasoner_jax.eval.entities import as_lexicon
from pathreasoner_jax.text.spans import extract_answer, full_text, reasoning_text, strip_end_tokens
from pathreasoner_jax.tokenizer import FORMAT_TAGS

METRIC_KEYS = ("format_compliance", "answer_accuracy", "bleu1", "bleu2", "bleu3", "bleu4",
               "rouge1", "rouge2", "rougeL", "entity_precision", "entity_recall", "entity_f1", "n")

_FORMAT_RE = re.compile(
    r"^\s*<observe>.*?</observe>\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


# ---------------------------------------------------------------- format and spans

def is_format_compliant(completion: str) -> bool:
    """The GRPO format rule (SPEC §6): exactly `<observe>…</observe>`, `<think>…</think>`,
    `<answer>…</answer>` in that order, only whitespace between/around them, each tag once.
    Span contents may be any text without a tag (empty included, as the reference regex)."""
    text = strip_end_tokens(completion)
    if any(text.count(tag) != 1 for tag in FORMAT_TAGS):
        return False
    return _FORMAT_RE.match(text) is not None


def format_compliance(completions: Sequence[str]) -> float:
    """Fraction of completions that satisfy `is_format_compliant` (0.0 for none)."""
    return sum(map(is_format_compliant, completions)) / len(completions) if completions else 0.0


# ---------------------------------------------------------------- answer accuracy

# A leading label before the answer proper: "Final Diagnosis:", "Answer -", "The most likely
# diagnosis is", "Impression:" … Removed repeatedly ("Final answer: Diagnosis: X" → "X").
_LABEL_RE = re.compile(
    r"^\s*(?:the\s+)?(?:(?:final|most\s+likely|primary|overall|differential)\s+)?"
    r"(?:diagnosis|answer|impression|conclusion)\s*(?:[:\-–—]|\bis\b)\s*", re.IGNORECASE)
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Normalisation for exact match: drop end tokens, lowercase, strip a leading label
    (`Final Diagnosis:`, `Answer:`, `The diagnosis is` …), turn Unicode punctuation into
    spaces (symbols such as `+` stay: "HER2 3+" ≠ "HER2 3"), remove the articles a/an/the,
    collapse whitespace."""
    text = strip_end_tokens(text).lower()
    prev = None
    while prev != text:
        prev, text = text, _LABEL_RE.sub("", text, count=1)
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """Normalised exact match of two answer strings (not completions: extract first)."""
    return normalize_answer(prediction) == normalize_answer(reference)


def answer_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of completions whose extracted answer matches the reference's (normalised)."""
    if not predictions:
        return 0.0
    hits = sum(exact_match(extract_answer(p), extract_answer(r)) for p, r in zip(predictions, references))
    return hits / len(predictions)


# ---------------------------------------------------------------- BLEU / ROUGE

def bleu_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 in [0, 1] (sacrebleu, see module doc) → {bleu1, bleu2, bleu3, bleu4}."""
    from sacrebleu.metrics import BLEU
    out = {}
    for n in range(1, 5):
        if not hypotheses:
            out[f"bleu{n}"] = 0.0
            continue
        score = BLEU(max_ngram_order=n, lowercase=True).corpus_score(list(hypotheses), [list(references)])
        out[f"bleu{n}"] = score.score / 100.0
    return out


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean per-sample ROUGE F-measure (rouge-score, stemmed) → {rouge1, rouge2, rougeL}."""
    from rouge_score import rouge_scorer
    keys = ("rouge1", "rouge2", "rougeL")
    if not hypotheses:
        return {k: 0.0 for k in keys}
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(ref, hyp)  # rouge-score's order is (target, prediction)
        for k in keys:
            totals[k] += scores[k].fmeasure
    return {k: v / len(hypotheses) for k, v in totals.items()}


# ---------------------------------------------------------------- entities

def entity_prf(predicted: Iterable[set], gold: Iterable[set]) -> dict[str, float]:
    """Micro-averaged precision/recall/F1 over samples: TP = Σ|P∩G|, precision = TP/Σ|P|,
    recall = TP/Σ|G|; a zero denominator gives 0.0 →
    {entity_precision, entity_recall, entity_f1}."""
    tp = n_pred = n_gold = 0
    for p, g in zip(predicted, gold):
        p, g = set(p), set(g)
        tp += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}


# ---------------------------------------------------------------- everything at once

def _metrics_for(preds, refs, pred_ents, gold_ents, text_span) -> dict:
    pick = extract_answer if text_span == "answer" else full_text
    hyps, golds = [pick(p) for p in preds], [pick(r) for r in refs]
    out = {"format_compliance": format_compliance(preds), "answer_accuracy": answer_accuracy(preds, refs)}
    out.update(bleu_scores(hyps, golds))
    out.update(rouge_scores(hyps, golds))
    out.update(entity_prf(pred_ents, gold_ents))
    out["n"] = len(preds)
    return out


def compute_metrics(predictions: Sequence[str], references: Sequence[str],
                    categories: Optional[Sequence] = None, lexicon=None, *,
                    reference_entities: Optional[Sequence[Iterable[str]]] = None,
                    text_span: str = "answer") -> dict:
    """All open-ended metrics for N completions against N references.

    predictions: (N,) decoded completions (with format tags).
    references: (N,) reference trajectories or plain reference answers.
    categories: (N,) category labels, or None (then `per_category` is {}).
    lexicon: `EntityLexicon` or list of {name, type, synonyms}; None → entity metrics 0.
    reference_entities: (N,) ground-truth entity-name sets; default = entities the lexicon
      finds in each reference's observe+think spans (whole reference when it has no tags).
    text_span: "answer" (BLEU/ROUGE on the answer spans) or "full" (whole texts, tags removed).

    Returns {format_compliance, answer_accuracy, bleu1, bleu2, bleu3, bleu4, rouge1, rouge2,
    rougeL, entity_precision, entity_recall, entity_f1, n, per_category: {cat: {same keys}}},
    every value in [0, 1] except the counts `n`.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if categories is not None and len(categories) != len(predictions):
        raise ValueError(f"{len(categories)} categories for {len(predictions)} predictions")
    if text_span not in ("answer", "full"):
        raise ValueError(f"text_span must be 'answer' or 'full', not {text_span!r}")
    lex = as_lexicon(lexicon)
    pred_ents = [lex.entities(reasoning_text(p)) for p in predictions]
    if reference_entities is None:
        gold_ents = [lex.entities(reasoning_text(r)) for r in references]
    else:
        gold_ents = [set(g) for g in reference_entities]

    out = _metrics_for(predictions, references, pred_ents, gold_ents, text_span)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, cat in enumerate(categories or []):
        groups["uncategorized" if cat is None else str(cat)].append(i)
    out["per_category"] = {
        cat: _metrics_for([predictions[i] for i in idx], [references[i] for i in idx],
                          [pred_ents[i] for i in idx], [gold_ents[i] for i in idx], text_span)
        for cat, idx in sorted(groups.items())}
    return out
