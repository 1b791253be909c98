"""`prepare` with the openai reasoning writer against a stub endpoint on 127.0.0.1
(precomputed features, so no slide is read): a failed call is recorded for its sample by
kind and the job carries on, counts reach the manifest, zero training samples is a
one-line UserError after the manifest is written, and a rerun calls the writer again for
the failed samples only."""
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pathreasoner_jax.config import load_config
from pathreasoner_jax.core.errors import UserError

KEY_ENV, KEY = "PATHREASONER_TEST_PREP_KEY", "sk-prep-secret-777"
REPORT = ("Specimen: esophagus, biopsy.\nMicroscopic description: Sections show keratin pearls and "
          "intercellular bridges. There is also polygonal cells.\nDiagnosis: squamous cell carcinoma, pT1.")
SLIDES = ["s1", "s2", "s3"]


def _reply(prompt: str) -> str:
    """A trajectory that follows the prompt (findings, every KG path, the diagnosis)."""
    findings = prompt.split("Findings: ")[1].split("\n")[0].split("; ")
    steps = [ln[2:] + "." for ln in prompt.splitlines() if ln.startswith("- ")]
    dx = re.search(r"Diagnosis to reach: (.*)", prompt).group(1)
    return ("<observe>\n" + "\n".join(f"The tissue shows {f}." for f in findings) + "\n</observe>\n<think>\n"
            + "\n".join(steps) + f"\nTaken together this is {dx}.\n</think>\n<answer>{dx}</answer>")


@pytest.fixture
def endpoint():
    state = {"mode": "ok", "calls": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["calls"] += 1
                n = state["calls"]
            if state["mode"] == "fail" or (state["mode"] == "alternate" and n % 2 == 0):
                out, code = b'{"error": "model not found"}', 400
            else:
                content = _reply(body["messages"][1]["content"])
                out, code = json.dumps({"choices": [{"message": {"content": content}}]}).encode(), 200
            self.send_response(code)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}"  # a server root: /v1/chat/completions added
    yield state
    srv.shutdown()
    srv.server_close()


def _cfg(tmp_path, url, monkeypatch):
    from pathreasoner_jax.slides.h5io import FeatureFile, write_features_h5
    monkeypatch.setenv(KEY_ENV, KEY)
    fd = tmp_path / "feats"
    fd.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    with open(tmp_path / "reports.jsonl", "w") as f:
        for sid in SLIDES:
            write_features_h5(str(fd / f"{sid}.h5"), FeatureFile(rng.normal(size=(12, 512)).astype(np.float32),
                                                                 np.arange(24).reshape(12, 2) * 256,
                                                                 {"patch_size": 256}))
            f.write(json.dumps({"slide_id": sid, "report": REPORT}) + "\n")
    return load_config(None, [f"data.features_dir={fd}", f"data.reports_path={tmp_path / 'reports.jsonl'}",
                              f"data.prep_dir={tmp_path / 'prep'}", "run.progress=false", "data.splits=[1.0]",
                              "data.augment_per_sample=1", "data.reasoning_writer=openai",
                              f"data.reasoning_url={url}", "data.reasoning_model=stub",
                              f"data.reasoning_api_key_env={KEY_ENV}", "data.reasoning_timeout_s=2",
                              "data.reasoning_retries=0", "data.reasoning_concurrency=2"])


def _manifest(tmp_path):
    return json.load(open(tmp_path / "prep" / "manifest.json"))


def test_every_call_failing_is_a_one_line_error_after_the_manifest(endpoint, tmp_path, monkeypatch, capsys):
    from data_prep.cli import prepare
    endpoint["mode"] = "fail"
    cfg = _cfg(tmp_path, endpoint["url"], monkeypatch)
    with pytest.raises(UserError) as e:
        prepare(cfg)
    msg = str(e.value)
    assert msg.startswith("no training samples: 6 reasoning-writer call(s) failed, most often http_400 (6 of them)")
    assert "HTTP 400" in msg and "/v1/chat/completions" in msg and "manifest.json" in msg
    assert "\n" not in msg and KEY not in msg and KEY not in capsys.readouterr().err
    m = _manifest(tmp_path)  # written before the error, with the counts
    assert m["writer_failures"] == {"http_400": 6} and m["counts"]["writer_failures"] == 6
    assert m["samples"]["train"] == 0 and len(m["slides_ok"]) == 3
    assert all(f["writer_failure"] == "http_400" for f in m["samples_failed"])
    # the endpoint is fixed: the rerun calls the writer for the failed samples and succeeds
    endpoint["mode"], endpoint["calls"] = "ok", 0
    assert prepare(cfg) == 0
    m = _manifest(tmp_path)
    assert endpoint["calls"] == 6 and m["writer_failures"] == {} and m["samples"]["train"] == 6
    endpoint["calls"] = 0
    assert prepare(cfg) == 0 and endpoint["calls"] == 0  # nothing failed: nothing is asked again


def test_some_calls_failing_are_recorded_and_the_job_carries_on(endpoint, tmp_path, monkeypatch):
    from data_prep.cli import prepare
    endpoint["mode"] = "alternate"  # every second call gets a 400 (not retried)
    cfg = _cfg(tmp_path, endpoint["url"], monkeypatch)
    assert prepare(cfg) == 0
    m = _manifest(tmp_path)
    assert m["writer_failures"] == {"http_400": 3} and m["samples"]["train"] == 3
    failed = {f["sample"] for f in m["samples_failed"] if f.get("writer_failure")}
    assert len(failed) == 3 and all(f["error"].startswith("report for slide") for f in m["samples_failed"])
    kept = json.load(open(tmp_path / "prep" / "samples" / "s1.json"))["samples"]
    endpoint["mode"], endpoint["calls"] = "ok", 0  # rerun: only the 3 failed samples are written again
    assert prepare(cfg) == 0
    m = _manifest(tmp_path)
    assert endpoint["calls"] == 3 and m["writer_failures"] == {} and m["samples"]["train"] == 6
    again = {s["sample_id"]: s for s in json.load(open(tmp_path / "prep" / "samples" / "s1.json"))["samples"]}
    assert all(again[s["sample_id"]] == s for s in kept)  # what was written is kept as it was
    assert not [p for p in os.listdir(tmp_path / "prep" / "samples") if p.startswith(".tmp")]
