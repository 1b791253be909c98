"""SlideBench-VQA (closed-set, multiple choice): CSV import, prompt, letter parsing, accuracy.

The published CSV columns are, exactly: ID, Slide, Tumor, Broad Category, Narrow Category,
Question, A, B, C, D, Answer. Broad categories are Microscopy, Diagnosis and Clinical.
`Answer` holds the correct letter ("A", also accepted: "(A)", "A. text", or the option's
text itself). Options whose cell is empty are left out (some questions have fewer than 4).
"""
from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.eval.metrics import normalize_answer
from pathreasoner_jax.text.spans import extract_answer

SLIDEBENCH_COLUMNS = ("ID", "Slide", "Tumor", "Broad Category", "Narrow Category",
                      "Question", "A", "B", "C", "D", "Answer")
BROAD_CATEGORIES = ("Microscopy", "Diagnosis", "Clinical")


@dataclass
class MCItem:
    """One multiple-choice question; `options` maps letters to texts, `answer` is a letter."""
    id: str
    slide: str
    question: str
    options: dict[str, str]
    answer: str
    broad_category: str = ""
    narrow_category: str = ""
    tumor: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- prompt

def build_mc_prompt(question: str, options: Mapping[str, str]) -> str:
    """The user turn for a multiple-choice question: the question, one "X. text" line per
    option, and the instruction to put the option letter in the `<answer>` span (the slide
    token and chat template are added by the caller)."""
    letters = sorted(options)
    lines = [question.strip()] + [f"{k}. {str(options[k]).strip()}" for k in letters]
    lines.append(f"Answer with the letter of the correct option ({', '.join(letters)}) "
                 "inside <answer></answer>.")
    return "\n".join(lines)


# ---------------------------------------------------------------- letter parsing

def _option_by_text(span: str, options: Mapping[str, str]) -> Optional[str]:
    norm_span = normalize_answer(span)
    if not norm_span:
        return None
    norm_opts = {k: normalize_answer(str(v)) for k, v in options.items() if str(v).strip()}
    equal = [k for k, v in norm_opts.items() if v == norm_span]
    if len(equal) == 1:
        return equal[0]
    # Whole-word containment ("Lung adenocarcinoma, grade 2" → "Adenocarcinoma"); the longest
    # contained option wins, and a tie between different options is no answer.
    contained = [(len(v), k) for k, v in norm_opts.items()
                 if v and re.search(rf"(?<!\w){re.escape(v)}(?!\w)", norm_span)]
    if not contained:
        return None
    contained.sort(reverse=True)
    if len(contained) > 1 and contained[0][0] == contained[1][0]:
        return None
    return contained[0][1]


def parse_choice(completion: str, options: Mapping[str, str]) -> Optional[str]:
    """The option letter a completion chose, or None. Looks at the `<answer>` span (see
    `extract_answer` for completions without one) and tries, in order:
      1. the span is just a letter, maybe wrapped: "B", "(b)", "**B.**";
      2. it starts with a letter and a delimiter: "B. Adenocarcinoma", "(B) …", "b) …";
      3. a phrase: "The answer is b", "Option C", "answer: (D)";
      4. the text of exactly one option (equal after normalisation, else the longest option
         contained as whole words): "Adenocarcinoma";
      5. a single distinct parenthesised letter "(C)", or a single distinct standalone
         capital letter that is not used as an article ("A tumour …" is not option A).
    A lowercase letter in rules 3 must end the phrase ("the answer is a tumour" is no answer).
    """
    letters = "".join(sorted(k.upper() for k in options))
    if not letters:
        return None
    span = extract_answer(completion).strip()
    cls = f"[{letters}{letters.lower()}]"

    m = re.fullmatch(rf"\W*({cls})\W*", span)
    if m:
        return m.group(1).upper()
    m = re.match(rf"\W*\(?({cls})\s*[\).:\]]", span)
    if m:
        return m.group(1).upper()
    for m in re.finditer(rf"\b(?:answer|option|choice)\b\s*(?:is\s*)?:?\s*(?:option\s*)?\(?({cls})(?!\w)",
                         span, re.IGNORECASE):
        letter, rest = m.group(1), span[m.end():]
        if letter.isupper() or re.match(r"\s*(?:$|[\).:,;!\]])", rest):
            return letter.upper()
    by_text = _option_by_text(span, options)
    if by_text is not None:
        return by_text.upper()
    found = {x.upper() for x in re.findall(rf"\(({cls})\)", span)}
    if len(found) == 1:
        return found.pop()
    found = set(re.findall(rf"(?<![\w-])([{letters}])(?![\w-])(?!\s+[a-z])", span))
    if len(found) == 1:
        return found.pop()
    return None


# ---------------------------------------------------------------- CSV import

def _resolve_answer(raw: str, options: Mapping[str, str]) -> Optional[str]:
    raw = raw.strip()
    m = re.fullmatch(r"\W*([A-Za-z])\s*(?:[.):\]].*)?", raw, re.DOTALL)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    return _option_by_text(raw, options)


def load_slidebench_csv(path: str) -> list[MCItem]:
    """Read a SlideBench-VQA CSV (exact published columns, see module doc) → items.
    Raises `UserError` (one line naming the file) on a missing file, a missing column, or a
    row whose Answer is neither an option letter nor an option's text."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: SlideBench CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in SLIDEBENCH_COLUMNS if c not in header]
        if missing:
            raise UserError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(repr(c) for c in missing)} "
                            f"(SlideBench-VQA needs {', '.join(SLIDEBENCH_COLUMNS)})")
        reader.fieldnames = header
        items = []
        for row_no, row in enumerate(reader, start=2):  # line 1 is the header
            row = {k: (v or "").strip() for k, v in row.items() if k is not None}
            options = {k: row[k] for k in "ABCD" if row[k]}
            answer = _resolve_answer(row["Answer"], options)
            if answer is None:
                raise UserError(f"{path}: line {row_no} (ID {row['ID']}): Answer {row['Answer']!r} "
                                f"is neither an option letter ({', '.join(options)}) nor an option's text")
            items.append(MCItem(
                id=row["ID"], slide=row["Slide"], question=row["Question"], options=options,
                answer=answer, broad_category=row["Broad Category"],
                narrow_category=row["Narrow Category"], tumor=row["Tumor"],
                extra={k: v for k, v in row.items() if k not in SLIDEBENCH_COLUMNS}))
    return items


# ---------------------------------------------------------------- scoring

def accuracy_table(flags: Sequence[bool], keys: Sequence[str]) -> dict[str, dict]:
    """(N,) correct flags grouped by (N,) keys → {key: {accuracy, n}} (empty key → "uncategorized")."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for flag, key in zip(flags, keys):
        groups[key or "uncategorized"].append(flag)
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}


def score_slidebench(items: Sequence[MCItem], completions: Sequence[str]) -> dict:
    """Accuracy of N completions on N items. A completion whose letter cannot be parsed
    counts as wrong. Returns {accuracy, n, n_unparsed,
    per_category: {broad category: {accuracy, n}}, per_narrow_category: {…: {accuracy, n}},
    predictions: [letter or None, …]}."""
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    chosen = [parse_choice(c, it.options) for c, it in zip(completions, items)]
    flags = [c == it.answer for c, it in zip(chosen, items)]
    return {
        "accuracy": sum(flags) / len(flags) if flags else 0.0,
        "n": len(flags),
        "n_unparsed": sum(c is None for c in chosen),
        "per_category": accuracy_table(flags, [it.broad_category for it in items]),
        "per_narrow_category": accuracy_table(flags, [it.narrow_category for it in items]),
        "predictions": chosen,
    }
