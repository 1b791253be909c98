"""The LLM judge against a stub OpenAI-compatible server on 127.0.0.1."""
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pathreasoner_jax.config import RewardsConfig
from pathreasoner_jax.grpo.judge import Judge, chat_url, parse_score, rubric_prompt

KEY_ENV, KEY = "PATHREASONER_TEST_JUDGE_KEY", "sk-test-secret-4711"
REPLIES = {"good": "0.8", "verbose": "Score: 0.65, the subtype is right", "big": "7", "negative": "-3",
           "garbage": "I cannot grade this."}


class Stub:
    def __init__(self):
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        self.auth: set = set()
        self.bodies: list = []


@pytest.fixture
def stub():
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            cand = body["messages"][0]["content"].split("CANDIDATE:\n")[1].split("\n")[0]
            with state.lock:
                state.hits[cand] = state.hits.get(cand, 0) + 1
                n = state.hits[cand]
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                state.auth.add(self.headers.get("Authorization"))
                state.bodies.append(body)
            left = [False]

            def leave():  # before the reply goes out: once it has, the client may send the next
                # request on that slot, which must not overlap this one in the count
                if not left[0]:
                    left[0] = True
                    with state.lock:
                        state.in_flight -= 1
            try:
                if cand == "slow":
                    time.sleep(1.0)
                if cand.startswith("busy"):
                    time.sleep(0.1)
                leave()
                if cand == "flaky" and n == 1:
                    self.send_response(500)
                    self.end_headers()
                    return
                if cand == "badjson":
                    out = b"<html>oops</html>"
                else:
                    reply = REPLIES.get(cand, "0.5")
                    out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out
            finally:
                leave()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield state
    srv.shutdown()
    srv.server_close()


def _judge(stub, monkeypatch, **kw):
    monkeypatch.setenv(KEY_ENV, KEY)
    args = dict(api_key_env=KEY_ENV, timeout_s=0.3, retries=1, concurrency=3, backoff_s=0.01)
    args.update(kw)
    return Judge(stub.url, "stub-model", **args)


def test_parse_score_and_url():
    assert parse_score("0.8") == 0.8 and parse_score("Score: .5/1") == 0.5
    assert parse_score("7") == 1.0 and parse_score("-2") == 0.0 and parse_score("1e-1") == 0.1
    assert parse_score("no number") is None and parse_score("") is None
    assert chat_url("http://h:1") == chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    p = rubric_prompt("Q?", "ref ans", "cand ans")
    assert "Q?" in p and "ref ans" in p and "cand ans" in p and "between 0 and 1" in p


def test_good_and_garbage_replies(stub, monkeypatch, caplog):
    j = _judge(stub, monkeypatch)
    cands = ["good", "verbose", "big", "negative", "garbage", "badjson"]
    with caplog.at_level(logging.DEBUG):
        got = j.score_batch(["q"] * len(cands), ["r"] * len(cands), cands)
    np.testing.assert_allclose(got, [0.8, 0.65, 1.0, 0.0, 0.0, 0.0])
    assert got.dtype == np.float32
    assert j.failures == 2 and stub.hits["garbage"] == 2 and stub.hits["badjson"] == 2  # 1 try + 1 retry
    assert stub.hits["good"] == 1
    # temperature 0, the model name, the key only in the Authorization header
    assert all(b["temperature"] == 0 and b["model"] == "stub-model" for b in stub.bodies)
    assert stub.auth == {f"Bearer {KEY}"}
    assert KEY not in caplog.text and KEY not in repr(j) and KEY not in str(j.stats)


def test_timeout_then_zero_and_retry_recovers(stub, monkeypatch):
    j = _judge(stub, monkeypatch)
    t0 = time.time()
    assert j.score("q", "r", "slow") == 0.0
    assert time.time() - t0 < 1.5 and j.failures == 1 and stub.hits["slow"] == 2
    assert j.score("q", "r", "flaky") == 0.5  # HTTP 500 first, then a good reply
    assert j.failures == 1 and j.stats["retries"] == 2


def test_cache_memory_and_disk(stub, monkeypatch, tmp_path):
    path = str(tmp_path / "judge_cache.jsonl")
    j = _judge(stub, monkeypatch, cache_path=path)
    assert j.score("q", "r", "good") == 0.8 and j.score("q", "r", "good") == 0.8
    assert stub.hits["good"] == 1 and j.stats["cache_hits"] == 1
    assert j.score("q2", "r", "good") == 0.8 and stub.hits["good"] == 2  # another question → another key
    j.score("q", "r", "garbage")  # failures are not cached
    j2 = _judge(stub, monkeypatch, cache_path=path)
    assert j2.score("q", "r", "good") == 0.8 and stub.hits["good"] == 2
    j2.score("q", "r", "garbage")
    assert stub.hits["garbage"] == 4


def test_bounded_concurrency(stub, monkeypatch):
    j = _judge(stub, monkeypatch, concurrency=3, timeout_s=2.0)
    n = 12
    got = j.score_batch([f"q{i}" for i in range(n)], ["r"] * n, [f"busy{i}" for i in range(n)])
    assert np.all(got == 0.5)
    assert 2 <= stub.max_in_flight <= 3


def test_from_config_without_key(stub, monkeypatch):
    monkeypatch.delenv("PATHREASONER_NO_SUCH_KEY", raising=False)
    cfg = RewardsConfig(judge_url=stub.url, judge_model="m", judge_api_key_env="PATHREASONER_NO_SUCH_KEY",
                        judge_timeout_s=1.0, judge_retries=0, judge_concurrency=2)
    j = Judge.from_config(cfg)
    assert j.score("q", "r", "good") == 0.8 and stub.auth == {None}  # no key: no header
    with pytest.raises(ValueError):
        Judge("", "m")


class _Tok:
    """Token i decodes to the <answer> span of CANDS[i]."""
    CANDS = ["good", "garbage", "slow", "good"]

    def decode(self, ids, **kw):
        return "".join(f"<answer>{self.CANDS[i]}</answer>" for i in ids)


def _rt(stub):
    import types
    rewards = RewardsConfig(semantic="judge", judge_url=stub.url, judge_model="m", judge_api_key_env="",
                            judge_timeout_s=0.3, judge_retries=0, judge_concurrency=2)
    return types.SimpleNamespace(cfg=types.SimpleNamespace(rewards=rewards), tokenizer=_Tok(), ids=None,
                                 model_cfg=types.SimpleNamespace(llm=types.SimpleNamespace(vocab_size=8)),
                                 layout=types.SimpleNamespace(judge_cache=None))


class _Prompts:
    def row_text(self, key):
        return f"q{key}", "r"


def test_failures_are_counted_by_kind_and_reach_the_reward_function(stub, monkeypatch):
    import pathreasoner_jax.grpo.reward_fn as rf
    j = _judge(stub, monkeypatch, retries=0)
    np.testing.assert_allclose(j.score_batch(["q"] * 3, ["r"] * 3, ["good", "garbage", "slow"]), [0.8, 0, 0])
    assert j.failure_counts() == {"bad_reply": 1, "timeout": 1} and j.failures == 2
    # the reward function of a run exposes the judge's cumulative counts (GRPO logs judge/failures/<kind>)
    monkeypatch.setattr(rf, "build_token_tables", lambda *a: None)
    monkeypatch.setattr(rf, "compile_lexicon", lambda *a: None)
    monkeypatch.setattr(rf, "compute_rewards", lambda *a, **kw: {"semantic": a[-1]})
    entities = type("E", (), {"names": [], "__getitem__": lambda self, k: []})()
    fn = rf.make_reward_fn(_rt(stub), entities, _Prompts())
    assert fn.failure_counts() == {}
    rollout = {"tokens": np.arange(4).reshape(4, 1), "mask": np.ones((4, 1), np.int32)}
    batch = {"ids": np.zeros((2, 1)), "row_key": np.arange(2), "gt_ids": np.zeros((2, 1)),
             "near_ids": np.zeros((2, 1)), "near_sim": np.zeros((2, 1)),
             "ref_ids": np.zeros((2, 1)), "ref_mask": np.zeros((2, 1))}
    sem = np.asarray(fn(rollout, batch, 2)["semantic"])
    np.testing.assert_allclose(sem, [0.8, 0, 0, 0.8])
    assert fn.failure_counts() == {"bad_reply": 1, "timeout": 1}
    fn(rollout, batch, 2)  # cumulative; good replies come from the cache, failures are tried again
    assert fn.failure_counts() == {"bad_reply": 2, "timeout": 2}
    assert rf.make_semantic_scorer(_rt(stub), _Prompts()).failure_counts() == {}
