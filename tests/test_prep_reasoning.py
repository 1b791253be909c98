"""Reasoning writers against a stub OpenAI-compatible server on 127.0.0.1 (good reply,
timeout, garbage, bounded concurrency, key never leaked), the template writer, the
quality filter, augmentation, and failures recorded at the sample level."""
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data_prep.kg import load_kg
from data_prep.linking import EntityLinker
from data_prep.sample_stage import SampleContext, samples_for
from data_prep.trajectories import analyse_report, make_inputs, quality_problem, ranked_paths
from data_prep.writers import OpenAIWriter, TemplateWriter, Trajectory, WriterError, parse_reply

SECRET = "sk-test-SECRET-123"
REPORT = ("Specimen: esophagus, biopsy.\nMicroscopic description: Sections show keratin pearls and "
          "intercellular bridges. There is also polygonal cells.\nDiagnosis: squamous cell carcinoma, pT1.")
GOOD = ("<observe>\nThe tissue shows keratin pearls.\n</observe>\n<think>\nkeratin pearls indicate keratinization; "
        "keratinization is characteristic of squamous cell carcinoma.\n</think>\n<answer>squamous cell carcinoma</answer>")


class Stub(BaseHTTPRequestHandler):
    seen_auth: list = []
    active = 0
    max_active = 0
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.seen_auth.append(self.headers.get("Authorization"))
        with Stub.lock:
            Stub.active += 1
            Stub.max_active = max(Stub.max_active, Stub.active)
        try:
            if self.path.startswith("/slow"):
                time.sleep(1.0)
            elif self.path.startswith("/good"):
                time.sleep(0.05)
        finally:
            # Leave the count before replying: once the client has its reply it may send the
            # next request at once, before this thread would reach a `finally` after the write.
            with Stub.lock:
                Stub.active -= 1
        if self.path.startswith("/garbage"):
            payload = b"<html>502 upstream confused</html>"
        else:
            content = GOOD if body["messages"][1]["content"] else ""
            payload = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def kg_linker():
    kg = load_kg("", "pathology")
    return kg, EntityLinker(kg)


def _inputs(kg, linker, n_aug=0):
    ev = analyse_report(linker, REPORT)
    return make_inputs(kg, ev, ranked_paths(kg, ev), "s1", REPORT, n_aug)


def test_openai_writer_good_reply_with_bounded_concurrency(server, kg_linker, monkeypatch):
    kg, linker = kg_linker
    monkeypatch.setenv("PR_TEST_KEY", SECRET)
    Stub.max_active = 0
    w = OpenAIWriter(server + "/good/v1", "tiny", "PR_TEST_KEY", timeout_s=5, retries=1, concurrency=2)
    inputs = [i for i, _ in _inputs(kg, linker)] * 6
    out = w.write_many(inputs)
    assert all(isinstance(t, Trajectory) for t in out)
    assert out[0].answer == "squamous cell carcinoma" and out[0].findings == ["The tissue shows keratin pearls."]
    assert 1 <= Stub.max_active <= 2
    assert Stub.seen_auth[-1] == f"Bearer {SECRET}"


def test_openai_writer_timeout_and_garbage(server, kg_linker, monkeypatch, caplog):
    kg, linker = kg_linker
    monkeypatch.setenv("PR_TEST_KEY", SECRET)
    inp = _inputs(kg, linker)[0][0]
    caplog.set_level(logging.DEBUG)
    for path, cause in (("/slow", "timed out"), ("/garbage", "unusable reply")):
        w = OpenAIWriter(server + path, "tiny", "PR_TEST_KEY", timeout_s=0.2, retries=1, backoff_s=0.01)
        t = time.time()
        with pytest.raises(WriterError) as e:
            w.write(inp)
        msg = str(e.value)
        assert cause in msg and path in msg and "(2 tries)" in msg and "\n" not in msg
        assert SECRET not in msg
        assert time.time() - t < 5
    assert SECRET not in caplog.text


def test_endpoint_failure_recorded_at_sample_level(server, kg_linker, tmp_path):
    kg, linker = kg_linker
    w = OpenAIWriter(server + "/garbage", "tiny", "", timeout_s=1, retries=1, backoff_s=0.01)
    ctx = SampleContext(kg, linker, w, augment=1, reports_path="reports.jsonl")
    samples, fails, label = samples_for("s1", {"report": REPORT}, "train", ctx, str(tmp_path))
    assert samples == [] and label == "squamous cell carcinoma" and len(fails) == 2
    assert all(f["error"].startswith("report for slide s1 (reports.jsonl): reasoning endpoint") for f in fails)
    assert [p.name for p in tmp_path.iterdir()] == ["s1.json"]  # cached, no temporaries left


def test_parse_reply_accepts_tags_info_and_json():
    t = parse_reply(GOOD.replace("observe>", "info>"))
    assert t.findings == ["The tissue shows keratin pearls."] and t.answer == "squamous cell carcinoma"
    j = parse_reply(json.dumps({"findings": ["a"], "reasoning": ["b", "c"], "answer": "d"}))
    assert (j.findings, j.reasoning, j.answer) == (["a"], ["b", "c"], "d")
    with pytest.raises(ValueError):
        parse_reply("I think it is cancer.")


def test_template_writer_quality_filter_and_augmentation(kg_linker):
    kg, linker = kg_linker
    inputs = _inputs(kg, linker, n_aug=3)
    assert len(inputs) == 4 and inputs[0][1].count("<image>") == 1
    w = TemplateWriter()
    trajs = w.write_many([i for i, _ in inputs])
    for (inp, _), t in zip(inputs, trajs):
        assert quality_problem(linker, t, inp) is None
        assert t.answer == "squamous cell carcinoma"
        for name in inp.path_entities:  # every path entity is spelled out in the reasoning
            assert name in " ".join(t.reasoning)
    assert trajs[0].findings == w.write(inputs[0][0]).findings  # deterministic
    canon = inputs[0][0]
    assert [f for f in canon.findings] == ["keratin pearls", "intercellular bridges", "polygonal cells"]
    variants = {tuple(i.findings) for i, _ in inputs[1:]} | {tuple(p[1] for p in i.paths) for i, _ in inputs[1:]}
    assert len(variants) > 1  # orders / subsets / paths differ
    bad = Trajectory(trajs[0].findings, trajs[0].reasoning, "colorectal adenocarcinoma")
    assert "does not name the diagnosis" in quality_problem(linker, bad, canon)
    thin = Trajectory(trajs[0].findings, ["It is squamous cell carcinoma."], "squamous cell carcinoma")
    assert "path entities" in quality_problem(linker, thin, canon)
