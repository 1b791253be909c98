"""The shared chat-completions client against real fault-injecting HTTP servers on
127.0.0.1: a trickling body and trickling headers cut at the total deadline, a reply cut
short, nothing listening, 500 then success, 429 with Retry-After, 400 not retried, an
unusable 200, failures counted by kind, and the API key never in logs or errors."""
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pathreasoner_jax.core.chat_client import ChatClient, ChatFailure, chat_url, safe_url

KEY_ENV, KEY = "PATHREASONER_TEST_CLIENT_KEY", "sk-client-secret-0042"
OK = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hello"}}]}).encode()


@pytest.fixture
def server():
    state = {"hits": {}, "auth": set(), "stop": threading.Event()}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            path = self.path.split("/v1/")[0]
            with lock:
                n = state["hits"][path] = state["hits"].get(path, 0) + 1
                state["auth"].add(self.headers.get("Authorization"))
            try:
                if path == "/trickle":  # headers at once, then one byte per 0.2 s
                    self.send_response(200)
                    self.send_header("Content-Length", "200")
                    self.end_headers()
                    for _ in range(200):
                        if state["stop"].wait(0.2):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                elif path == "/trickle-head":  # even the status line comes one byte per 0.2 s
                    for b in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
                        if state["stop"].wait(0.2):
                            return
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                elif path == "/truncated":  # Content-Length larger than the body, then close
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(OK[:20])
                    self.wfile.flush()
                    self.close_connection = True
                elif path == "/flaky" and n == 1:
                    self._send(500, b"upstream error")
                elif path == "/busy" and n == 1:
                    self._send(429, b"slow down", [("Retry-After", "0")])
                elif path == "/bad":
                    self._send(400, b'{"error": "bad request"}')
                elif path == "/garbage":
                    self._send(200, b"<html>proxy error</html>")
                else:
                    self._send(200, OK, [("Content-Type", "application/json")])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["base"] = f"http://127.0.0.1:{srv.server_address[1]}"
    yield state
    state["stop"].set()
    srv.shutdown()
    srv.server_close()


def _client(url, monkeypatch, **kw):
    monkeypatch.setenv(KEY_ENV, KEY)
    args = dict(api_key_env=KEY_ENV, deadline_s=1.0, retries=1, concurrency=2, backoff_s=0.01)
    args.update(kw)
    return ChatClient(url, "m", **args)


def _fails(client, kind):
    with pytest.raises(ChatFailure) as e:
        client.complete([{"role": "user", "content": "hi"}])
    assert e.value.kind == kind, str(e.value)
    msg = str(e.value)
    assert KEY not in msg and "\n" not in msg and KEY not in repr(e.value.args)
    return e.value


def test_url_rule_and_safe_url():
    assert chat_url("http://h:1") == chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions/") == "http://h:1/v1/chat/completions"
    assert safe_url("https://user:pw@h:8/v1/chat/completions?api-key=x#f") == "https://h:8/v1/chat/completions"
    with pytest.raises(ValueError):
        ChatClient("", "m")
    with pytest.raises(ValueError):
        ChatClient("ftp://h/v1", "m")


@pytest.mark.parametrize("path", ["/trickle", "/trickle-head"])
def test_trickling_server_is_cut_at_the_total_deadline(server, monkeypatch, path):
    c = _client(server["base"] + path, monkeypatch, retries=0)
    t = time.monotonic()
    e = _fails(c, "timeout")
    took = time.monotonic() - t
    assert 0.9 <= took < 1.6, took  # 1 s deadline, though every byte came within 0.2 s
    assert "deadline 1s" in str(e) and "(1 try)" in str(e) and path in str(e)
    assert c.failure_counts() == {"timeout": 1} and c.stats["requests"] == 1


def test_truncated_reply_is_classified_and_retried(server, monkeypatch):
    c = _client(server["base"] + "/truncated", monkeypatch)
    e = _fails(c, "truncated")
    assert "cut short" in str(e) and e.attempts == 2 and server["hits"]["/truncated"] == 2


def test_unreachable_port(monkeypatch, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    c = _client(f"http://127.0.0.1:{port}", monkeypatch, retries=2)
    with caplog.at_level(logging.DEBUG):
        e = _fails(c, "connect")
    assert "unreachable" in str(e) and e.attempts == 3 and c.stats["retries"] == 2
    assert KEY not in caplog.text


def test_500_then_success_and_429_retry_after(server, monkeypatch):
    c = _client(server["base"] + "/flaky", monkeypatch)
    assert c.complete([{"role": "user", "content": "hi"}]) == "hello"
    assert server["hits"]["/flaky"] == 2 and c.stats == {"requests": 2, "retries": 1, "failures": 0}
    c = _client(server["base"] + "/busy", monkeypatch)
    assert c.complete([{"role": "user", "content": "hi"}]) == "hello" and server["hits"]["/busy"] == 2
    assert c.failure_counts() == {}


def test_400_is_not_retried_and_the_key_stays_secret(server, monkeypatch, caplog):
    c = _client(server["base"] + "/bad/v1", monkeypatch, retries=3)
    with caplog.at_level(logging.DEBUG):
        e = _fails(c, "http_400")
    assert server["hits"]["/bad"] == 1 and e.attempts == 1 and "HTTP 400" in str(e)
    assert server["auth"] == {f"Bearer {KEY}"}  # sent, in the header only
    assert KEY not in caplog.text and KEY not in repr(c) and KEY not in str(c.stats)


def test_unusable_reply_and_parse_rejection_count_as_bad_reply(server, monkeypatch):
    c = _client(server["base"] + "/garbage", monkeypatch)
    e = _fails(c, "bad_reply")
    assert "unusable reply" in str(e) and server["hits"]["/garbage"] == 2

    def parse(text):
        raise ValueError("no number in it")
    c2 = _client(server["base"] + "/ok", monkeypatch, retries=0)
    with pytest.raises(ChatFailure, match="no number in it") as e2:
        c2.complete([{"role": "user", "content": "hi"}], parse=parse)
    assert e2.value.kind == "bad_reply"
    counts = {}
    for client in (c, c2):
        for k, v in client.failure_counts().items():
            counts[k] = counts.get(k, 0) + v
    assert counts == {"bad_reply": 2}


def test_map_keeps_order_and_params_reach_the_body(server, monkeypatch):
    c = _client(server["base"] + "/ok", monkeypatch, concurrency=3)
    out = c.map(lambda i: (i, c.complete([{"role": "user", "content": str(i)}], temperature=0)), range(7))
    assert out == [(i, "hello") for i in range(7)] and c.map(str, []) == []
