"""The `judge` semantic reward: an LLM behind an OpenAI-compatible /v1/chat/completions.

Rubric prompt, temperature 0, the first number in the reply clamped to [0, 1]. Each
request has a timeout; failures (transport errors, HTTP errors, replies without a
number) are retried with exponential backoff, then scored 0 and counted. At most
`concurrency` requests are in flight (a thread pool). Scores are cached by
sha256(model, rubric version, question, reference, candidate) in memory and, when
`cache_path` is set, in a JSON-lines file that later runs reload; failures are not cached.
The API key is read from the environment variable named in the config and is sent only
in the Authorization header: it never appears in logs, errors or repr.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

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


def chat_url(url: str) -> str:
    """Accepts a server root, a `/v1` base or the full endpoint."""
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    return u + ("/chat/completions" if u.endswith("/v1") else "/v1/chat/completions")


class JudgeError(RuntimeError):
    pass


class Judge:
    """Scores (question, reference, candidate) triples; thread-safe; see the module docstring."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 30.0,
                 retries: int = 3, concurrency: int = 8, cache_path: Optional[str] = None,
                 backoff_s: float = 1.0, max_tokens: int = 8):
        if not url:
            raise ValueError("the judge needs rewards.judge_url (an OpenAI-compatible endpoint)")
        self.url, self.model = chat_url(url), model
        self.api_key_env = api_key_env
        self.timeout_s, self.retries, self.concurrency = float(timeout_s), int(retries), max(1, int(concurrency))
        self.backoff_s, self.max_tokens = float(backoff_s), int(max_tokens)
        self.cache_path = cache_path
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "cache_hits": 0}
        self._cache: dict[str, float] = {}
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
        return f"Judge(url={self.url!r}, model={self.model!r}, key_env={self.api_key_env!r})"

    @property
    def failures(self) -> int:
        return self.stats["failures"]

    def _key(self, question: str, reference: str, candidate: str) -> str:
        blob = json.dumps([self.model, RUBRIC_VERSION, question, reference, candidate])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _request(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        self._count("requests")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            data = json.loads(resp.read().decode("utf-8", "replace"))
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError("reply without choices[0].message.content") from None

    def score(self, question: str, reference: str, candidate: str) -> float:
        key = self._key(question, reference, candidate)
        with self._lock:
            if key in self._cache:
                self.stats["cache_hits"] += 1
                return self._cache[key]
        prompt = rubric_prompt(question, reference, candidate)
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
            try:
                s = parse_score(self._request(prompt))
                if s is None:
                    raise JudgeError("reply holds no number")
            except (OSError, http.client.HTTPException, ValueError, JudgeError) as e:
                # the message names the error class and the URL only, never headers
                log.warning("judge attempt %d/%d failed: %s", attempt + 1, self.retries + 1,
                            type(e).__name__ + (f" {e.code}" if isinstance(e, urllib.error.HTTPError) else ""))
                continue
            self._store(key, s)
            return s
        self._count("failures")
        return 0.0

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
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return np.asarray(list(pool.map(self.score, questions, references, candidates)), np.float32)
