"""Reasoning writers (SPEC §4): findings + KG paths + diagnosis → trajectory.

`TemplateWriter` works offline and is deterministic (seeded per input). `OpenAIWriter`
asks an LLM behind an OpenAI-compatible endpoint through the shared client
(`pathreasoner_jax/core/chat_client.py`, the same URL rule as the judge: a server root
gets `/v1/chat/completions`, a `/v1` base gets `/chat/completions`): a total deadline
per attempt (`reasoning_timeout_s`), `reasoning_retries` retries after the first try
with back-off (a reply `parse_reply` rejects is retried too), at most
`reasoning_concurrency` requests in flight. A call that still fails becomes a
`WriterError` with the failure's `kind` for that one input; the others carry on. The API
key is read from the environment variable named in the config and only ever placed in
the request header — it is never logged or written into an error message.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field

from pathreasoner_jax.core.chat_client import ChatClient, ChatFailure
from pathreasoner_jax.records import clean_step, parse_trajectory

log = logging.getLogger(__name__)


@dataclass
class ReasoningInput:
    """What a writer sees for one trajectory. paths: (finding, clause text, entity names)."""
    key: str
    findings: list[str]
    paths: list[tuple[str, str, list[str]]]
    diagnosis: str
    anatomy: list[str] = field(default_factory=list)
    report: str = ""
    seed: int = 0

    @property
    def path_entities(self) -> list[str]:
        return list(dict.fromkeys(n for _, _, names in self.paths for n in names))


@dataclass
class Trajectory:
    findings: list[str]
    reasoning: list[str]
    answer: str


class WriterError(RuntimeError):
    """A trajectory that could not be written; the message is one line, `kind` the
    endpoint failure's kind (`timeout`, `http_500`, `bad_reply`, ...; see chat_client)."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


_FINDING_TEMPLATES = ("There is evidence of {f}.", "The tissue shows {f}.", "Sections show {f}.",
                      "The slide demonstrates {f}.")
_CONNECTORS = ("First, ", "Next, ", "Also, ", "Moreover, ", "In addition, ", "Further, ")


class TemplateWriter:
    """Offline writer: one finding sentence per finding, one step per KG path, a closing step."""

    name = "template"

    def write(self, inp: ReasoningInput) -> Trajectory:
        rng = random.Random(inp.seed)
        findings = [rng.choice(_FINDING_TEMPLATES).format(f=f) for f in inp.findings]
        steps = []
        for i, (_, clause, _) in enumerate(inp.paths):
            conn = _CONNECTORS[0] if i == 0 else rng.choice(_CONNECTORS[1:])
            steps.append(f"{conn}{clause}.")
        if inp.anatomy:
            steps.append(f"The specimen is from the {inp.anatomy[0]}, consistent with the site of {inp.diagnosis}.")
        steps.append(f"Taken together, these findings support a diagnosis of {inp.diagnosis}.")
        return Trajectory(findings, steps, inp.diagnosis)

    def write_many(self, inputs: list[ReasoningInput]) -> list[Trajectory | WriterError]:
        return [self.write(i) for i in inputs]


SYSTEM_PROMPT = (
    "You are a pathologist writing step-by-step diagnostic reasoning grounded in a medical "
    "knowledge graph. Reply with exactly three tagged spans and nothing else:\n"
    "<observe>one histopathological finding per line</observe>\n"
    "<think>one reasoning step per line, using the knowledge-graph relations given</think>\n"
    "<answer>the diagnosis</answer>")


def build_prompt(inp: ReasoningInput) -> str:
    lines = [f"Pathology report:\n{inp.report.strip()}" if inp.report else "",
             "Findings: " + "; ".join(inp.findings),
             "Knowledge-graph paths (use every entity named here):"]
    lines += [f"- {clause}" for _, clause, _ in inp.paths]
    if inp.anatomy:
        lines.append("Site: " + ", ".join(inp.anatomy))
    lines.append(f"Diagnosis to reach: {inp.diagnosis}")
    return "\n".join(x for x in lines if x)


def parse_reply(text: str) -> Trajectory:
    """Tagged spans (`<observe>`/`<info>`, `<think>`, `<answer>`) or a JSON object
    {"findings": [...], "reasoning": [...], "answer": "..."}; raises ValueError."""
    try:
        f, r, a = parse_trajectory(text)
    except ValueError:
        try:
            d = json.loads(text.strip().removeprefix("```json").removesuffix("```"))
            f, r, a = [clean_step(x) for x in d["findings"]], [clean_step(x) for x in d["reasoning"]], clean_step(d["answer"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("reply has neither the tagged spans nor the JSON fields") from None
    if not f or not r or not a:
        raise ValueError("reply has an empty findings, reasoning or answer span")
    return Trajectory(f, r, a)


class OpenAIWriter:
    name = "openai"

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 retries: int = 3, concurrency: int = 4, temperature: float = 0.7, backoff_s: float = 1.0):
        if not url:
            raise WriterError("data.reasoning_url is empty (needed for reasoning_writer=openai)")
        try:
            self.client = ChatClient(url, model, api_key_env, deadline_s=timeout_s, retries=retries,
                                     concurrency=concurrency, backoff_s=backoff_s)
        except ValueError as e:
            raise WriterError(f"data.reasoning_url: {e}") from None
        self.url, self.model, self.api_key_env = self.client.url, model, api_key_env
        self.temperature = temperature

    def __repr__(self) -> str:  # no key here
        return f"OpenAIWriter(url={self.client.shown_url!r}, model={self.model!r})"

    def failure_counts(self) -> dict[str, int]:
        """kind → calls that failed with it, since this writer was made."""
        return self.client.failure_counts()

    def write(self, inp: ReasoningInput) -> Trajectory:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": build_prompt(inp)}]
        try:
            return self.client.complete(messages, parse=parse_reply, temperature=self.temperature)
        except ChatFailure as e:
            raise WriterError(f"reasoning endpoint {e}", e.kind) from None

    def write_many(self, inputs: list[ReasoningInput]) -> list[Trajectory | WriterError]:
        def one(inp):
            try:
                return self.write(inp)
            except WriterError as e:
                return e
        return self.client.map(one, inputs)


def build_writer(cfg_data) -> TemplateWriter | OpenAIWriter:
    kind = cfg_data.reasoning_writer
    if kind == "template":
        return TemplateWriter()
    if kind == "openai":
        return OpenAIWriter(cfg_data.reasoning_url, cfg_data.reasoning_model, cfg_data.reasoning_api_key_env,
                            timeout_s=float(cfg_data.reasoning_timeout_s),
                            retries=int(cfg_data.reasoning_retries),
                            concurrency=int(cfg_data.reasoning_concurrency))
    raise WriterError(f"unknown data.reasoning_writer {kind!r} (template | openai)")
