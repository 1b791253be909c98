"""Pathology reports: one per slide, from .jsonl, .json or .csv.

Fields: `slide_id` and `report` (required), `diagnosis` (optional: a KG diagnosis name
that overrides the one found in the text), `question` (optional; must hold one
`<image>`). A .json file may also be a {slide_id: report text} mapping. A .json file in
the reference's conversation format is imported by `data_prep.reference` instead.
"""
from __future__ import annotations

import csv
import json

from pathreasoner_jax.core.errors import UserError


def is_conversation_json(path: str) -> bool:
    if not path.lower().endswith(".json"):
        return False
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "conversations" in data[0]


def load_reports(path: str) -> dict[str, dict]:
    """slide_id → {"report": str, "diagnosis": str, "question": str}."""
    try:
        low = path.lower()
        if low.endswith(".jsonl"):
            with open(path) as f:
                rows = []
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError:
                            raise UserError(f"{path}:{i}: not a JSON object") from None
        elif low.endswith(".json"):
            with open(path) as f:
                data = json.load(f)
            rows = [{"slide_id": k, "report": v} for k, v in data.items()] if isinstance(data, dict) else data
        elif low.endswith(".csv"):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            raise UserError(f"{path}: reports must be .jsonl, .json or .csv")
    except FileNotFoundError:
        raise UserError(f"{path}: reports file not found") from None
    except (OSError, ValueError, csv.Error) as e:
        raise UserError(f"{path}: cannot read reports ({' '.join(str(e).split())[:200]})") from None
    out = {}
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not r.get("slide_id") or not isinstance(r.get("report"), str):
            raise UserError(f"{path}: record {i} needs 'slide_id' and 'report'")
        out[str(r["slide_id"])] = {"report": r["report"], "diagnosis": r.get("diagnosis") or "",
                                   "question": r.get("question") or ""}
    return out
