"""Multiple-choice questions: the prompt, the answer letter of a completion, GRPO rewards
and evaluation metrics (pure Python and numpy: called per completion in the GRPO loop).

A completion looks like `<observe>…</observe><think>…</think><answer>B</answer>`; its
answer is the LAST complete `<answer>…</answer>` span (a model that restates its answer
is judged by the final one). Accepted answer shapes, case-insensitive:
"B", "(B)", "B.", "B)", "B: text", "B. text of option", "Option B", "answer: B",
"The answer is (B)"; then, when the options are known, the option's text itself; then one
explicit reference anywhere ("I choose option B", "squamous cell carcinoma (C)").
Naming two different letters ("A or B", "A, C", "option A, not option B") is no answer.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from pathreasoner_jax.eval.metrics import is_format_compliant, normalize_answer
from pathreasoner_jax.text.spans import strip_end_tokens

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ANSWER_SPANS = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# a leading label, removed repeatedly: "Final answer:", "The correct option is", "Choice -"
_PREFIX = re.compile(r"^(?:the\s+)?(?:(?:final|correct|right|best)\s+)?(?:answer|option|choice)\b"
                     r"(?:\s+is)?\s*[:\-–—]?\s*", re.IGNORECASE)
_LONE = re.compile(r"^\(?([A-Za-z])\)?[.)\]:]?$")  # "B", "(b)", "B.", "B)"
_WITH_TEXT = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])(?:[.)\]:]|\s+[-–—:]))\s*(.*)$", re.DOTALL)  # "B. text"
_LIST = re.compile(r"^\(?[A-Za-z]\)?(?:\s*(?:,|/|&|\bor\b|\band\b)\s*\(?[A-Za-z]\)?)+[.]?$", re.IGNORECASE)
# explicit references anywhere: "option B", "choice (c)"; "answer is B." / "answer: (b)" (not
# "the answer is a squamous cell carcinoma": there a bare letter must end a clause); "(C)"
_REF_OPTION = re.compile(r"\b(?:option|choice)\s*[:\-]?\s*\(?([A-Za-z])\)?(?![A-Za-z0-9])", re.IGNORECASE)
_REF_ANSWER = re.compile(r"\banswer(?:\s+is)?\s*[:\-]?\s*(?:\(([A-Za-z])\)|([A-Za-z])(?=\s*(?:$|[.,;:!?])))",
                         re.IGNORECASE)
_DECORATION = " \t\n*_`\"'"
_REF_PAREN = re.compile(r"\(([A-Z])\)")  # a capital only: "(a)" may be a list marker in prose


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """"What is the diagnosis? Options: A. x B. y C. z" — the question form of the MCQ
    records and of the SFT conversations built from them (one line, as Patho-R1's)."""
    return f"{question.strip()} Options: " + " ".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options))


def last_answer_span(completion: str) -> Optional[str]:
    """Stripped content of the last complete `<answer>…</answer>` span; None without one."""
    spans = _ANSWER_SPANS.findall(strip_end_tokens(completion))
    return spans[-1].strip() if spans else None


def _refs(text: str) -> set[str]:
    """Letters explicitly referred to anywhere in `text` (upper case)."""
    out = {m.group(1).upper() for m in _REF_OPTION.finditer(text)}
    out |= {(m.group(1) or m.group(2)).upper() for m in _REF_ANSWER.finditer(text)}
    return out | set(_REF_PAREN.findall(text))


def _strict_letter(answer: str) -> tuple[Optional[str], bool]:
    """(letter, ambiguous) for the accepted shapes at the start of the answer."""
    text, prev = answer, None
    while text != prev:  # labels and markdown decoration off: "**Final answer:** Option (B)" → "(B)"
        prev, text = text, _PREFIX.sub("", text.strip(_DECORATION), count=1).strip(_DECORATION)
    if _LIST.match(text):
        letters = {c.upper() for c in re.findall(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", text)}
        return (letters.pop(), False) if len(letters) == 1 else (None, True)
    m = _LONE.match(text)
    if m:
        return m.group(1).upper(), False
    m = _WITH_TEXT.match(text)
    if m:
        letter, rest = (m.group(1) or m.group(2)).upper(), m.group(3)
        lead = re.match(r"^(?:,|/|&|or\b|and\b)\s*\(?([A-Za-z])\)?(?![A-Za-z0-9])", rest, re.IGNORECASE)
        others = _refs(rest) | ({lead.group(1).upper()} if lead else set())
        return (None, True) if others - {letter} else (letter, False)
    return None, False


def extract_letter(completion: str, num_options: int, options: Optional[Sequence[str]] = None) -> Optional[str]:
    """The answer letter ("A".."Z") of a completion, or None: no complete `<answer>` span, an
    empty one, two different letters named, a letter outside the first `num_options`, or
    (with `options`) no letter and no option text matching (eval.metrics.normalize_answer)."""
    answer = last_answer_span(completion)
    if not answer:
        return None
    letter, ambiguous = _strict_letter(answer)
    if ambiguous:
        return None
    if letter is None and options:
        key = normalize_answer(answer)
        hits = [k for k, o in enumerate(options[:num_options]) if key and normalize_answer(o) == key]
        letter = LETTERS[hits[0]] if len(hits) == 1 else None
    if letter is None:
        refs = _refs(answer)
        letter = refs.pop() if len(refs) == 1 else None
    return letter if letter is not None and LETTERS.index(letter) < num_options else None


def _per_item(value, n: int, what: str) -> list:
    """A scalar (the same for every item) or a sequence of n → a list of n."""
    if value is None or isinstance(value, (int, np.integer)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: {len(value)} values for {n} completions")
    return value


def mcq_rewards(completions: Sequence[str], answers: Sequence[str], num_options,
                options: Optional[Sequence[Sequence[str]]] = None) -> dict[str, np.ndarray]:
    """Per completion (N,) float32 rewards: "accuracy" (extracted letter == answer),
    "format" (eval.metrics.is_format_compliant), "answered" (a letter was extracted).
    num_options: an int or one per completion; options: None or one option list per completion."""
    n = len(completions)
    answers, counts = _per_item(list(answers), n, "answers"), _per_item(num_options, n, "num_options")
    opts = [None] * n if options is None else _per_item(list(options), n, "options")
    letters = [extract_letter(c, int(k), o) for c, k, o in zip(completions, counts, opts)]
    return {"accuracy": np.asarray([float(p is not None and p == str(a).strip().upper())
                                    for p, a in zip(letters, answers)], np.float32),
            "format": np.asarray([float(is_format_compliant(c)) for c in completions], np.float32),
            "answered": np.asarray([float(p is not None) for p in letters], np.float32)}


def mcq_metrics(predictions: Sequence[Optional[str]], answers: Sequence[str], categories: Sequence[str],
                num_options) -> dict:
    """Accuracy of predicted letters (`extract_letter`'s: None = unanswered, counted wrong)
    → {"n", "accuracy", "answered", "chance" (mean 1/num_options: a uniform guesser's
    accuracy), "per_category": {category: {"n", "accuracy", "answered"}}}. An empty category
    is reported as "unknown". num_options: an int or one per question. Plain floats/ints."""
    n = len(predictions)
    answers, cats = _per_item(list(answers), n, "answers"), _per_item(list(categories), n, "categories")
    counts = _per_item(num_options, n, "num_options")
    for p in predictions:
        if p is not None and (not isinstance(p, str) or len(p.strip()) != 1):
            raise ValueError(f"prediction {p!r} is not a letter (extract_letter the completions first)")
    hit = [p is not None and p.strip().upper() == str(a).strip().upper() for p, a in zip(predictions, answers)]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cats):
        groups[str(c) if c else "unknown"].append(i)

    def summary(idx):
        m = len(idx)
        return {"n": m, "accuracy": sum(hit[i] for i in idx) / m if m else 0.0,
                "answered": sum(predictions[i] is not None for i in idx) / m if m else 0.0}

    out = summary(range(n))
    out["chance"] = sum(1.0 / int(k) for k in counts) / n if n else 0.0
    out["per_category"] = {c: summary(idx) for c, idx in sorted(groups.items())}
    return out
