"""Report → KG-grounded trajectories: evidence from linking, paths per (finding, diagnosis)
pair, writer inputs with augmentation, and the quality filter (SPEC §4).

Augmentation (N variants per sample, `data.augment_per_sample`, in addition to the
canonical trajectory): each variant re-orders the findings (step order), may drop one
finding when three or more remain (subset), picks another of the ranked paths per
finding and rotates among parallel relations (different paths), and uses another
question wording. Duplicates are removed after writing.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from data_prep.kg import KnowledgeGraph
from data_prep.linking import EntityLinker, Mention
from data_prep.paths import KGPath, find_paths, verbalize
from data_prep.writers import ReasoningInput, Trajectory

QUESTIONS = (
    "<image>\nWhat is the diagnosis of this whole slide image? Report the histopathological findings "
    "in <observe>, reason step by step in <think>, and give the final diagnosis in <answer>.",
    "<image>\nYou are an AI pathologist. Examine the slide, list the findings, explain the clinical "
    "reasoning and state the most likely diagnosis, using <observe>, <think> and <answer>.",
    "<image>\nDescribe what you see on this slide and reason your way to a diagnosis. Use the "
    "format <observe>findings</observe> <think>reasoning</think> <answer>diagnosis</answer>.",
    "<image>\nWhich diagnosis best explains the morphology in this whole slide image? Observe, think, "
    "then answer in the <observe>/<think>/<answer> format.",
)


class SampleError(ValueError):
    """A report that yields no usable sample; the message is one line."""


@dataclass
class Evidence:
    """Linked report: finding/diagnosis/anatomy node ids (non-negated, in text order)."""
    findings: list[str]
    diagnosis: str
    anatomy: list[str]
    mentions: list[Mention]


def stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("::".join(map(str, parts)).encode()).digest()[:8], "little")


def analyse_report(linker: EntityLinker, text: str, diagnosis_hint: str = "") -> Evidence:
    mentions = linker.link(text)
    if not mentions:
        raise SampleError("report has no linkable KG entity")
    pos = [m for m in mentions if not m.negated]
    if diagnosis_hint:
        hint = [m for m in linker.link(diagnosis_hint) if m.type == "diagnosis"]
        if not hint:
            raise SampleError(f"diagnosis {diagnosis_hint!r} is not a KG diagnosis entity")
        diagnosis = hint[0].node
    else:
        dx = [m for m in pos if m.type == "diagnosis"]
        if not dx:
            raise SampleError("report names no diagnosis entity")
        cue = text.lower().rfind("diagnosis")
        after = [m for m in dx if m.start > cue] if cue >= 0 else []
        diagnosis = (after or dx)[0].node
    findings = list(dict.fromkeys(m.node for m in pos if m.type == "finding"))
    if not findings:
        raise SampleError("report has no linkable finding entity")
    anatomy = list(dict.fromkeys(m.node for m in pos if m.type == "anatomy"))
    return Evidence(findings, diagnosis, anatomy, mentions)


def ranked_paths(kg: KnowledgeGraph, ev: Evidence, max_paths: int = 50, top_k: int = 3) -> dict[str, list[KGPath]]:
    """finding node → its top-k paths to the diagnosis (findings without a path left out)."""
    out = {}
    for f in ev.findings:
        p = find_paths(kg, f, ev.diagnosis, max_paths, top_k)
        if p:
            out[f] = p
    if not out:
        raise SampleError(f"no KG path links the findings to {kg.name(ev.diagnosis)!r}")
    return out


def make_inputs(kg: KnowledgeGraph, ev: Evidence, paths: dict[str, list[KGPath]], sample_id: str,
                report: str, num_variants: int) -> list[tuple[ReasoningInput, str]]:
    """[(writer input, question)]: the canonical one first, then `num_variants` variants."""
    out = []
    for v in range(num_variants + 1):
        rng = random.Random(stable_seed(sample_id, v))
        order = list(ev.findings)
        if v > 0:
            rng.shuffle(order)
            if len(order) >= 3 and rng.random() < 0.5:
                order.pop(rng.randrange(len(order)))
        steps = []
        for i, f in enumerate(order):
            if f in paths:
                p = paths[f][(v + i) % len(paths[f]) if v else 0]
                steps.append((kg.name(f), verbalize(kg, p, relation_choice=v), p.names(kg)))
        if not steps:
            continue
        q = QUESTIONS[0] if v == 0 else QUESTIONS[rng.randrange(len(QUESTIONS))]
        out.append((ReasoningInput(key=f"{sample_id}::{v}", findings=[kg.name(f) for f in order],
                                   paths=steps, diagnosis=kg.name(ev.diagnosis),
                                   anatomy=[kg.name(a) for a in ev.anatomy], report=report,
                                   seed=stable_seed(sample_id, v, "writer")), q))
    return out


def quality_problem(linker: EntityLinker, traj: Trajectory, inp: ReasoningInput) -> str | None:
    """None when the trajectory's answer names the diagnosis and its observe+think text
    mentions every entity on the input's paths; else the reason it is rejected."""
    by_name = linker.kg.nodes_by_name()
    answer_nodes = {m.node for m in linker.link(traj.answer) if not m.negated}
    if by_name.get(inp.diagnosis) not in answer_nodes:
        return f"answer {traj.answer[:60]!r} does not name the diagnosis {inp.diagnosis!r}"
    body = {m.node for m in linker.link("\n".join(traj.findings + traj.reasoning))}
    missing = [n for n in inp.path_entities if by_name.get(n) not in body]
    if missing:
        return f"reasoning does not mention path entities {', '.join(missing[:3])}"
    return None


def sample_entities(linker: EntityLinker, traj: Trajectory) -> list[str]:
    """Ground-truth entities: canonical names linked (not negated) in observe + think."""
    ms = linker.link("\n".join(traj.findings + traj.reasoning))
    return list(dict.fromkeys(m.name for m in ms if not m.negated))


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(" ".join(text.split())) if s.strip()]
