"""The `judge` semantic reward: an LLM behind an OpenAI-compatible /v1/chat/completions.

Rubric prompt, temperature 0, the first number in the reply clamped to [0, 1]. Requests
go through the shared client (`core/chat_client.py`): a total deadline per attempt
(`timeout_s`), bounded retries with back-off on transient failures (a reply without a
number counts as `bad_reply` and is retried too), at most `concurrency` in flight.

A call that still fails scores 0 and is counted by kind (`failure_counts()`, logged by
the GRPO trainer as `judge/failures/<kind>`, recorded by eval as `judge_failures`).
Why 0 rather than an exception: one bad call must not end a training run hours in, and
0 is the rubric's "wrong" floor, so a failure can only lower that completion's reward
(when a whole group fails, its semantic reward is constant and adds no advantage); the
counts make a run with many failures visible. Scores are cached by sha256(model, rubric
version, question, reference, candidate) in memory and, when `cache_path` is set, in a
JSON-lines file that later runs reload; failures are not cached. The API key is read from
the environment variable named in the config and is sent only in the Authorization
header: it never appears in logs, errors or repr.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from typing import Optional, Sequence

import numpy as np

from pathreasoner_jax.core.chat_client import ChatClient, ChatFailure, chat_url  # noqa: F401 (chat_url: re-export)

RUBRIC_VERSION = "v1"
RUBRIC = """You are a board-certified pathologist grading a model's answer to a question about a \
whole-slide image.

Compare the CANDIDATE answer with the REFERENCE answer and score how well the candidate \
agrees with it:
- 1.0: same diagnosis/finding (synonyms and standard terminology variants count as the same), \
no contradicting claims;
- 0.5-0.9: partly correct (right category but wrong subtype, grade or site; or correct with \
minor errors or omissions);
- 0.1-0.4: mostly wrong but with some correct relevant element;
- 0.0: wrong, contradictory, empty or unrelated.
Judge clinical content only, not style or length.

QUESTION:
{question}

REFERENCE:
{reference}

CANDIDATE:
{candidate}

Reply with a single number between 0 and 1 and nothing else."""

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def rubric_prompt(question: str, reference: str, candidate: str) -> str:
    return RUBRIC.format(question=question.strip(), reference=reference.strip(), candidate=candidate.strip())


def parse_score(reply: str) -> Optional[float]:
    """The first number in `reply` clamped to [0, 1]; None when there is none."""
    m = _NUMBER.search(reply or "")
    if m is None:
        return None
    v = float(m.group(0))
    return None if v != v else min(1.0, max(0.0, v))  # NaN is no score


def _score_or_raise(reply: str) -> float:
    s = parse_score(reply)
    if s is None:
        raise ValueError("reply holds no number")
    return s


class Judge:
    """Scores (question, reference, candidate) triples; thread-safe; see the module docstring."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 30.0,
                 retries: int = 3, concurrency: int = 8, cache_path: Optional[str] = None,
                 backoff_s: float = 1.0, max_tokens: int = 8):
        if not url:
            raise ValueError("the judge needs rewards.judge_url (an OpenAI-compatible endpoint)")
        self.client = ChatClient(url, model, api_key_env, deadline_s=timeout_s, retries=retries,
                                 concurrency=concurrency, backoff_s=backoff_s)
        self.url, self.model, self.api_key_env = self.client.url, model, api_key_env
        self.timeout_s, self.retries, self.concurrency = float(timeout_s), int(retries), self.client.concurrency
        self.max_tokens = int(max_tokens)
        self.cache_path = cache_path
        self._cache: dict[str, float] = {}
        self._hits = 0
        self._lock = threading.Lock()
        if cache_path and os.path.exists(cache_path):
            with open(cache_path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self._cache[rec["key"]] = float(rec["score"])
                    except (ValueError, KeyError):
                        continue  # a torn last line from a crash

    @classmethod
    def from_config(cls, rcfg, cache_path: Optional[str] = None, **kw) -> "Judge":
        """From a `RewardsConfig` (judge_url, judge_model, judge_api_key_env, timeouts...)."""
        return cls(rcfg.judge_url, rcfg.judge_model, rcfg.judge_api_key_env, rcfg.judge_timeout_s,
                   rcfg.judge_retries, rcfg.judge_concurrency, cache_path, **kw)

    def __repr__(self) -> str:  # no key here
        return f"Judge(url={self.client.shown_url!r}, model={self.model!r}, key_env={self.api_key_env!r})"

    def close(self) -> None:
        self.client.close()

    @property
    def stats(self) -> dict:
        """requests (attempts sent), retries, failures (scored 0), cache_hits."""
        with self._lock:
            return {**self.client.stats, "cache_hits": self._hits}

    @property
    def failures(self) -> int:
        return self.client.stats["failures"]

    def failure_counts(self) -> dict[str, int]:
        """kind → judge calls that failed with it (each scored 0), cumulative."""
        return self.client.failure_counts()

    def _key(self, question: str, reference: str, candidate: str) -> str:
        blob = json.dumps([self.model, RUBRIC_VERSION, question, reference, candidate])
        return hashlib.sha256(blob.encode()).hexdigest()

    def score(self, question: str, reference: str, candidate: str) -> float:
        key = self._key(question, reference, candidate)
        with self._lock:
            if key in self._cache:
                self._hits += 1
                return self._cache[key]
        try:
            s = self.client.complete([{"role": "user", "content": rubric_prompt(question, reference, candidate)}],
                                     parse=_score_or_raise, temperature=0, max_tokens=self.max_tokens)
        except ChatFailure:
            return 0.0  # counted by kind in the client (see the module docstring for why 0)
        self._store(key, s)
        return s

    def _store(self, key: str, s: float) -> None:
        with self._lock:
            self._cache[key] = s
            if self.cache_path:
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "score": s}) + "\n")

    def score_batch(self, questions: Sequence[str], references: Sequence[str],
                    candidates: Sequence[str]) -> np.ndarray:
        """(B,) float32 scores, at most `concurrency` requests in flight."""
        if not len(questions) == len(references) == len(candidates):
            raise ValueError("questions, references and candidates must have the same length")
        if not candidates:
            return np.zeros(0, np.float32)
        return np.asarray(self.client.map(self.score, questions, references, candidates), np.float32)
