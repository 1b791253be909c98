"""The one OpenAI-compatible chat-completions client (the reasoning writer of `prepare`
and the GRPO/eval judge both use it), on httpx (transport) and tenacity (retries).

- URL: `chat_url` accepts a server root (`/v1/chat/completions` is appended), a `/v1`
  base (`/chat/completions` is appended) or the full endpoint (kept as is).
- Deadline: `deadline_s` bounds one HTTP attempt in total: connect, TLS, sending the body,
  the status line and headers, and all of the reply body. Per-operation socket timeouts
  alone do not: a server that sends one byte a second never trips them. So every socket
  operation of an attempt gets the time left to its deadline as its timeout (a wrapper
  around httpcore's network backend, `_DeadlineBackend`, reading a per-thread deadline),
  and the body is streamed with the deadline checked between chunks. Not covered: a DNS
  look-up that hangs (the system resolver has no timeout we can pass).
- Retries: at most `retries` more attempts after the first, exponential back-off with
  jitter (capped at `max_backoff_s`; a `Retry-After` of a 429/503 is honoured up to that
  cap) on timeouts, connection errors, replies cut short, 429, 5xx and unusable 200
  replies (a proxy's HTML error page, or a sampled reply the caller's `parse` rejects);
  no retry on other 4xx (the request itself is wrong) nor on a reply over the size cap.
- Every failed call raises `ChatFailure` with a `kind` (`timeout`, `connect`, `network`,
  `protocol`, `truncated`, `http_<code>`, `bad_reply`, `too_large`, `bad_request`) and
  is counted by kind (`failure_counts()`, cumulative, thread-safe).
- Concurrency: `map` runs calls on a thread pool of `concurrency` workers; the connection
  pool holds as many connections.
- The API key is read from the environment variable named by `api_key_env` at each
  request and sent only in the Authorization header; it is never logged, never put in an
  error message or repr (messages are built from kinds and status codes, and scrubbed).
  URLs in messages lose their user-info and query string.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import httpcore
import httpx
import tenacity

from pathreasoner_jax.core.errors import one_line

log = logging.getLogger(__name__)

_DEADLINE: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar("chat_deadline", default=None)


def chat_url(url: str) -> str:
    """Accepts a server root, a `/v1` base or the full endpoint."""
    u = url.strip().rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    return u + ("/chat/completions" if u.endswith("/v1") else "/v1/chat/completions")


def safe_url(url: str) -> str:
    """`url` without user-info, query or fragment (for messages)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{p.scheme}://{host}{f':{p.port}' if p.port else ''}{p.path}"


def _left(timeout: Optional[float], exc: type) -> Optional[float]:
    """The socket timeout for one operation: `timeout`, at most the time to the deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner):
        self._inner = inner

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every operation bounded by the thread's deadline."""

    def __init__(self, inner):
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self._inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                                       local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout),
                                                               socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _transport(url: str, connections: int) -> httpx.HTTPTransport:
    """An httpx transport (env proxies honoured as urllib did, loopback never proxied) whose
    connection pool uses `_DeadlineBackend`."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    proxy = None
    if host not in ("localhost", "::1") and not host.startswith("127.") and not urllib.request.proxy_bypass(host):
        proxy = urllib.request.getproxies().get(p.scheme)
    t = httpx.HTTPTransport(proxy=proxy, limits=httpx.Limits(max_connections=connections,
                                                             max_keepalive_connections=connections))
    pool = getattr(t, "_pool", None)  # httpx keeps its httpcore pool here (0.18 to 0.28 at least)
    if pool is None or not hasattr(pool, "_network_backend"):  # tests/test_endpoint_client.py would fail
        log.warning("httpx %s: cannot bound socket operations by the deadline; only the body is", httpx.__version__)
    else:
        pool._network_backend = _DeadlineBackend(pool._network_backend)
    return t


class ChatFailure(RuntimeError):
    """A chat call that failed after its tries; `kind` classifies it, the message is one line."""

    def __init__(self, kind: str, reason: str, url: str = "", attempts: int = 1, retryable: bool = False,
                 retry_after: Optional[float] = None):
        self.kind, self.reason, self.url, self.attempts = kind, reason, url, attempts
        self.retryable, self.retry_after = retryable, retry_after
        super().__init__(self._text())

    def _text(self) -> str:
        return f"{self.url}: {self.reason} ({self.attempts} {'try' if self.attempts == 1 else 'tries'})"

    def finished(self, attempts: int) -> "ChatFailure":
        self.attempts = attempts
        self.args = (self._text(),)
        return self


def _retry_after(resp: httpx.Response) -> Optional[float]:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return None  # absent, or an HTTP date: the back-off applies


class ChatClient:
    """See the module docstring. `complete` → the reply's content (or `parse(content)`)."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", deadline_s: float = 30.0,
                 retries: int = 3, concurrency: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_reply_bytes: int = 4 << 20):
        if not url or not str(url).strip():
            raise ValueError("empty endpoint URL")
        self.url, self.model, self.api_key_env = chat_url(url), model, api_key_env
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https") or not urllib.parse.urlsplit(self.url).hostname:
            raise ValueError(f"endpoint URL {safe_url(self.url)!r} is not an http(s) URL")
        self.shown_url = safe_url(self.url)
        self.deadline_s, self.retries = float(deadline_s), max(0, int(retries))
        self.concurrency = max(1, int(concurrency))
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.max_reply_bytes = int(max_reply_bytes)
        self._backoff = (tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)
                         + tenacity.wait_random(0, self.backoff_s))  # backoff_s · 2^(n-1) + jitter
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "retries": 0, "failures": 0}
        self._kinds: Counter = Counter()
        self._http = httpx.Client(transport=_transport(self.url, self.concurrency), follow_redirects=False,
                                  timeout=httpx.Timeout(self.deadline_s))

    def __repr__(self) -> str:  # no key here
        return f"ChatClient(url={self.shown_url!r}, model={self.model!r}, key_env={self.api_key_env!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def stats(self) -> dict:
        """requests (attempts sent), retries, failures (calls that gave up)."""
        with self._lock:
            return dict(self._stats)

    def failure_counts(self) -> dict[str, int]:
        """kind → calls that failed with it, since this client was made."""
        with self._lock:
            return dict(self._kinds)

    def _count(self, name: str, kind: str = "") -> None:
        with self._lock:
            self._stats[name] += 1
            if kind:
                self._kinds[kind] += 1

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "").strip() if self.api_key_env else ""

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _fail(self, kind: str, reason: str, retryable: bool, retry_after: Optional[float] = None) -> ChatFailure:
        return ChatFailure(kind, self._scrub(reason), self.shown_url, retryable=retryable, retry_after=retry_after)

    def _attempt(self, body: bytes, parse: Optional[Callable[[str], Any]]) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._count("requests")
        deadline = time.monotonic() + self.deadline_s
        token = _DEADLINE.set(deadline)
        in_body, timed_out = False, f"timed out (deadline {self.deadline_s:g}s)"
        try:
            with self._http.stream("POST", self.url, content=body, headers=headers,
                                   timeout=httpx.Timeout(self.deadline_s)) as resp:
                if resp.status_code >= 300:
                    code = resp.status_code
                    raise self._fail(f"http_{code}", f"HTTP {code}", code == 429 or code >= 500,
                                     _retry_after(resp))
                in_body, chunks, size = True, [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > self.max_reply_bytes:
                        raise self._fail("too_large", f"reply over {self.max_reply_bytes} bytes", False)
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise self._fail("timeout", timed_out, True)
        except httpx.TimeoutException:
            raise self._fail("timeout", timed_out, True) from None
        except httpx.ConnectError as e:
            raise self._fail("connect", f"unreachable ({one_line(str(e), 80) or 'connect error'})", True) from None
        except (httpx.RemoteProtocolError, httpx.NetworkError) as e:
            if in_body:
                raise self._fail("truncated", f"reply cut short ({type(e).__name__})", True) from None
            kind = "protocol" if isinstance(e, httpx.RemoteProtocolError) else "network"
            raise self._fail(kind, f"connection failed ({type(e).__name__})", True) from None
        except httpx.HTTPError as e:  # a request httpx refuses to send (e.g. a bad header value)
            raise self._fail("bad_request", f"request not sent ({type(e).__name__})", False) from None
        finally:
            _DEADLINE.reset(token)
        try:
            data = json.loads(b"".join(chunks))
            content = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._fail("bad_reply", "unusable reply (not JSON with choices[0].message.content)", True) from None
        if parse is None:
            return content
        try:
            return parse(content)
        except ValueError as e:
            raise self._fail("bad_reply", f"unusable reply ({one_line(str(e), 120)})", True) from None

    def _wait(self, state: tenacity.RetryCallState) -> float:
        base = self._backoff(state)
        after = getattr(state.outcome.exception(), "retry_after", None) or 0.0
        return min(self.max_backoff_s, max(base, after))

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        self._count("retries")
        e = state.outcome.exception()
        log.info("%s: attempt %d/%d failed (%s), retrying in %.2fs", self.shown_url, state.attempt_number,
                 self.retries + 1, getattr(e, "reason", type(e).__name__), state.upcoming_sleep)

    def complete(self, messages: Sequence[dict], parse: Optional[Callable[[str], Any]] = None, **params) -> Any:
        """One chat call: `params` (temperature, max_tokens...) go into the request body;
        `parse` may reject the content with ValueError (then it counts as `bad_reply`).
        Raises `ChatFailure` after the last try."""
        body = json.dumps({"model": self.model, **params, "messages": list(messages)}).encode()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1), wait=self._wait, reraise=True,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, ChatFailure) and e.retryable),
            before_sleep=self._before_sleep)
        try:
            return retrying(self._attempt, body, parse)
        except ChatFailure as e:
            e.finished(retrying.statistics.get("attempt_number", 1))
            self._count("failures", e.kind)
            log.warning("%s", e)
            raise

    def map(self, fn: Callable[..., Any], *iterables) -> list:
        """`[fn(*args)]` in order, at most `concurrency` at a time."""
        items = list(zip(*iterables))
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(lambda a: fn(*a), items))
