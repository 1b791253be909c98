"""WSI-VQA (Chen et al., ECCV 2024): JSON import and scoring, closed and open questions.

The released files (`WsiVQA_{train,val,test}.json`) are a JSON list of items such as
`{"Id": "TCGA-LD-A74U", "Question": "...", "Choice": ["...", ...], "Answer": "<option text>"}`;
open questions have no `Choice`. Field names are matched case-insensitively, with aliases
(first present wins), so re-packaged copies load too:

    id        Id, id, question_id, qid            (default: the item's index)
    slide     slide, slide_id, wsi, image, Id     (WSI-VQA's Id is the TCGA case = slide key)
    question  Question, q, prompt
    answer    Answer, gt, gt_answer, label
    options   Choice, Choices, options            list → letters A, B, …; dict {letter: text};
                                                  or one string "A. x B. y …"
    category  category, Broad Category, type, question_type   (default "closed" / "open")

The top level may be a list, a dict holding the list under data/items/questions/annotations,
or JSON Lines. Closed questions are scored with the multiple-choice letter parser: correct
when the chosen option's text equals the reference answer after normalisation (the answer is
usually the option's text); when no letter can be parsed, the answer span itself is compared.
Open questions: normalised exact match of the answer span.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.eval.metrics import exact_match, normalize_answer
from pathreasoner_jax.text.spans import extract_answer
from pathreasoner_jax.eval.slidebench import MCItem, accuracy_table, build_mc_prompt, parse_choice

FIELD_ALIASES = {
    "id": ("id", "question_id", "qid"),
    "slide": ("slide", "slide_id", "wsi", "image", "id"),
    "question": ("question", "q", "prompt"),
    "answer": ("answer", "gt", "gt_answer", "label"),
    "options": ("choice", "choices", "options"),
    "category": ("category", "broad category", "type", "question_type"),
}
_LIST_KEYS = ("data", "items", "questions", "annotations")


def _field(item: Mapping, name: str) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in item.items()}
    for alias in FIELD_ALIASES[name]:
        if alias in lowered and lowered[alias] not in (None, ""):
            return lowered[alias]
    return None


def _parse_options(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return {str(k).strip().upper(): str(v).strip() for k, v in raw.items() if str(v).strip()}
    if isinstance(raw, (list, tuple)):
        return {chr(ord("A") + i): str(v).strip() for i, v in enumerate(raw) if str(v).strip()}
    # "A. x B: y C) z" — split at a letter + delimiter that starts the string or follows a space.
    parts = re.split(r"(?:^|\s)([A-Ha-h])[.:)]\s*", str(raw).strip())
    return {parts[i].upper(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2) if parts[i + 1].strip()}


def _read_records(path: str) -> list:
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON or JSON Lines ({e})") from None
    if isinstance(data, Mapping):
        data = next((data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)), None)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of questions (or a dict with one under {'/'.join(_LIST_KEYS)})")
    return data


def load_wsivqa_json(path: str) -> list[MCItem]:
    """Read a WSI-VQA JSON/JSONL file → items (`options` empty for open questions; `answer`
    is the reference answer text). Raises `UserError` naming the file and item on a missing
    question or answer field."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: WSI-VQA JSON not found")
    items = []
    for i, rec in enumerate(_read_records(path)):
        if not isinstance(rec, Mapping):
            raise UserError(f"{path}: item {i} is not an object")
        question, answer = _field(rec, "question"), _field(rec, "answer")
        for name, value in (("question", question), ("answer", answer)):
            if value is None:
                raise UserError(f"{path}: item {i} has no {name} field "
                                f"(looked for {', '.join(FIELD_ALIASES[name])}, any case)")
        options = _parse_options(_field(rec, "options"))
        category = _field(rec, "category")
        items.append(MCItem(
            id=str(_field(rec, "id") if _field(rec, "id") is not None else i),
            slide=str(_field(rec, "slide") or ""), question=str(question), options=options,
            answer=str(answer).strip(),
            broad_category=str(category) if category is not None else ("closed" if options else "open"),
            extra=dict(rec)))
    return items


def wsivqa_prompt(item: MCItem) -> str:
    """Multiple-choice prompt for a closed question; the bare question for an open one."""
    return build_mc_prompt(item.question, item.options) if item.options else item.question.strip()


def _is_correct(item: MCItem, completion: str) -> tuple[bool, Optional[str]]:
    if not item.options:
        return exact_match(extract_answer(completion), item.answer), None
    letter = parse_choice(completion, item.options)
    chosen_text = item.options[letter] if letter else extract_answer(completion)
    gold = item.answer
    # A gold answer given as a bare letter ("B") refers to that option.
    if re.fullmatch(r"\W*[A-Ha-h]\W*", gold) and gold.strip("() .").upper() in item.options:
        gold = item.options[gold.strip("() .").upper()]
    return normalize_answer(chosen_text) == normalize_answer(gold), letter


def score_wsivqa(items: Sequence[MCItem], completions: Sequence[str]) -> dict:
    """Accuracy of N completions on N WSI-VQA items. Returns {accuracy, n,
    closed: {accuracy, n}, open: {accuracy, n}, per_category: {cat: {accuracy, n}},
    predictions: [letter or None, …]} (a split with no items has accuracy 0.0, n 0)."""
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    results = [_is_correct(it, c) for it, c in zip(items, completions)]
    flags = [ok for ok, _ in results]

    def split(closed: bool) -> dict:
        sel = [f for f, it in zip(flags, items) if bool(it.options) == closed]
        return {"accuracy": sum(sel) / len(sel) if sel else 0.0, "n": len(sel)}

    return {
        "accuracy": sum(flags) / len(flags) if flags else 0.0,
        "n": len(flags),
        "closed": split(True),
        "open": split(False),
        "per_category": accuracy_table(flags, [it.broad_category for it in items]),
        "predictions": [letter for _, letter in results],
    }
