"""Reasoning writers (SPEC §4): findings + KG paths + diagnosis → trajectory.

`TemplateWriter` works offline and is deterministic (seeded per input). `OpenAIWriter`
asks an LLM behind an OpenAI-compatible `/chat/completions` endpoint, with a timeout,
retries with back-off, and a bounded number of concurrent requests. The API key is read
from the environment variable named in the config and only ever placed in the request
header — it is never logged or written into an error message.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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
    """A trajectory that could not be written; the message is one line."""


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
        self.url = url.rstrip("/") if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s, self.retries, self.concurrency = timeout_s, max(1, retries), max(1, concurrency)
        self.temperature, self.backoff_s = temperature, backoff_s

    def _request(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": self.temperature,
                           "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                        {"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            payload = json.loads(resp.read().decode("utf-8", "replace"))
        return payload["choices"][0]["message"]["content"]

    def write(self, inp: ReasoningInput) -> Trajectory:
        prompt, cause = build_prompt(inp), ""
        for attempt in range(self.retries):
            try:
                return parse_reply(self._request(prompt))
            except TimeoutError:
                cause = f"timed out after {self.timeout_s:g}s"
            except urllib.error.HTTPError as e:
                cause = f"HTTP {e.code}"
            except urllib.error.URLError as e:
                cause = "timed out" if isinstance(e.reason, TimeoutError) else f"unreachable ({e.reason})"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                cause = f"unusable reply ({' '.join(str(e).split())[:120]})"
            except OSError as e:
                cause = f"connection failed ({e.__class__.__name__})"
            if attempt + 1 < self.retries:
                time.sleep(self.backoff_s * (2 ** attempt))
        raise WriterError(f"reasoning endpoint {self.url}: {cause} ({self.retries} tries)")

    def write_many(self, inputs: list[ReasoningInput]) -> list[Trajectory | WriterError]:
        def one(inp):
            try:
                return self.write(inp)
            except WriterError as e:
                return e
        with ThreadPoolExecutor(self.concurrency) as ex:
            return list(ex.map(one, inputs))


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
