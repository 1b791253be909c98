"""Import of the published reference's conversation JSON (SPEC §8; `id`, `image`,
`conversations` with `from`/`value`, `<info>` tags) as sample records.

`<info>` becomes `<observe>` (in the prompt too); the section headers the reference
puts inside its spans ("Histopathological Findings:", "Clinical Reasoning:", "Final
Diagnosis:") are dropped; findings are split into sentences and reasoning into its
non-empty lines, so each can be masked on its own. The split comes from the id prefix
(`train::0` → train; `test::`, `val::`/`valid::`); the slide id from the image file name.
"""
from __future__ import annotations

import json
import re

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.records import IMAGE_TOKEN, SampleRecord, parse_trajectory
from pathreasoner_jax.slides.reader import slide_id_of
from data_prep.trajectories import split_sentences

_HEADERS = re.compile(r"^\s*(histopathological findings|clinical reasoning|final diagnosis)\s*:\s*", re.I)
_SPLIT = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _strip_header(lines: list[str]) -> list[str]:
    out = [_HEADERS.sub("", x).strip() for x in lines]
    return [x for x in out if x]


def import_conversations(path: str, linker=None, default_split: str = "train") -> tuple[list[SampleRecord], list[dict]]:
    """→ (samples, failures [{sample, error}]); one sample per human/gpt turn pair."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read conversation JSON ({' '.join(str(e).split())[:200]})") from None
    samples, failures = [], []
    for i, item in enumerate(data):
        sid = str(item.get("id", i))
        try:
            conv = item["conversations"]
            turns = [(conv[j]["value"], conv[j + 1]["value"]) for j in range(0, len(conv) - 1, 2)
                     if conv[j]["from"] == "human" and conv[j + 1]["from"] == "gpt"]
            if not turns:
                raise ValueError("no human/gpt turn pair")
            for t, (question, answer) in enumerate(turns):
                q = question.replace("<info>", "<observe>").replace("</info>", "</observe>")
                if q.count(IMAGE_TOKEN) != 1:
                    q = q.replace(IMAGE_TOKEN, "").strip() + "\n" + IMAGE_TOKEN
                findings, reasoning, ans = parse_trajectory(answer)
                findings = [s for x in _strip_header(findings) for s in split_sentences(x)]
                reasoning = _strip_header(reasoning)
                ans = _HEADERS.sub("", ans).strip()
                if not findings or not reasoning or not ans:
                    raise ValueError("empty findings, reasoning or answer")
                ents = []
                if linker is not None:
                    ents = list(dict.fromkeys(m.name for m in linker.link("\n".join(findings + reasoning)) if not m.negated))
                split = _SPLIT.get(sid.split("::")[0].lower(), default_split) if "::" in sid else default_split
                samples.append(SampleRecord(sample_id=sid if len(turns) == 1 else f"{sid}#{t}",
                                            slide_id=slide_id_of(str(item.get("image", ""))), split=split,
                                            question=q, findings=findings, reasoning=reasoning, answer=ans,
                                            diagnosis=ans, entities=ents, category="reference"))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            failures.append({"sample": sid, "error": f"{path}: sample {sid}: {' '.join(str(e).split())}"})
    return samples, failures
