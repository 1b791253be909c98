"""`prepare` end to end on a small synthetic corpus with bad inputs mixed in: manifest,
shards, readers (grain source, slide store, tfds, entities, tokenizer), resumability
after SIGKILL (identical shards), and disjoint worker parts + merge."""
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def _cfg(corpus, prep, *extra):
    return load_config(None, [f"data.slides_dir={corpus['slides_dir']}", f"data.reports_path={corpus['reports_path']}",
                              f"data.prep_dir={prep}", "run.progress=false", "data.splits=[0.34, 0.33, 0.33]",
                              "data.augment_per_sample=2", *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from data_prep.demo.corpus import generate_demo_corpus
    root = tmp_path_factory.mktemp("corpus")
    c = generate_demo_corpus(str(root / "demo"), num_slides=5, seed=3, sizes=(1024, 1280))
    sd = c["slides_dir"]
    shutil.copyfile(os.path.join(sd, "demo-001.tiff"), os.path.join(sd, "nolink.tiff"))
    with open(os.path.join(sd, "corrupt.svs"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    blank = np.full((768, 768, 3), 242, np.uint8)
    with tifffile.TiffWriter(os.path.join(sd, "blank.tiff")) as tw:
        tw.write(blank, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open(c["reports_path"], "a") as f:
        f.write(json.dumps({"slide_id": "nolink", "report": "Received in formalin, entirely submitted."}) + "\n")
        f.write(json.dumps({"slide_id": "ghost", "report": "Sections show keratin pearls. Diagnosis: SCC."}) + "\n")
    return c


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    from data_prep.cli import prepare
    prep = str(tmp_path_factory.mktemp("prepA") / "prep")
    rc = prepare(_cfg(corpus, prep))
    return prep, rc


def test_manifest_records_bad_inputs_and_continues(prepared):
    prep, rc = prepared
    assert rc == 0
    m = json.load(open(os.path.join(prep, "manifest.json")))
    assert m["slides_ok"] == ["demo-000", "demo-001", "demo-002", "demo-003", "demo-004", "nolink"]
    failed = {os.path.basename(f["path"]): f["error"] for f in m["slides_failed"]}
    assert set(failed) == {"corrupt.svs", "blank.tiff"}
    for f in m["slides_failed"]:
        assert f["error"].startswith(f["path"]) and "\n" not in f["error"]
    assert "no tissue" in failed["blank.tiff"] and "corrupt" in failed["corrupt.svs"]
    errs = {f["slide_id"]: f["error"] for f in m["samples_failed"]}
    assert "no linkable KG entity" in errs["nolink"] and "reports.jsonl" in errs["nolink"]
    assert "no slide or feature file" in errs["ghost"]
    assert m["samples"]["val"] == 1 and m["samples"]["test"] == 1  # the two normal-mucosa slides
    assert 8 <= m["samples"]["train"] <= 12  # 3 train slides × (1 + 2 variants), minus duplicates
    for sh in m["shards"]["slides"] + [s for sp in m["shards"]["samples"].values() for s in sp]:
        assert _sha(os.path.join(prep, sh["path"])) == sh["sha256"]
    assert not glob.glob(os.path.join(prep, "**", ".tmp-*"), recursive=True)
    assert sorted(os.listdir(os.path.join(prep, "features"))) == [s + ".h5" for s in m["slides_ok"]]
    assert m["config_hash"] and m["counts"]["patches"] > 0 and m["feature_dim"] == 512


def test_readers_grain_slide_store_entities(prepared):
    import grain
    from pathreasoner_jax.data.store import SampleSource, SlideStore, load_entities, load_manifest
    from pathreasoner_jax.records import parse_trajectory
    from pathreasoner_jax.slides.h5io import read_features_h5
    prep, _ = prepared
    m = load_manifest(prep)
    store = SlideStore(prep)
    assert len(store) == 6 and "demo-002" in store and "corrupt" not in store
    rec = store["demo-002"]
    ff = read_features_h5(os.path.join(prep, "features", "demo-002.h5"))
    np.testing.assert_array_equal(rec.features, ff.features)
    np.testing.assert_array_equal(rec.coords, ff.coords)
    assert rec.cluster_ids.max() < 8 and rec.label == "squamous cell carcinoma"
    ents = load_entities(prep)
    names = set(ents.names)
    for split in ("train", "val", "test"):
        src = SampleSource(prep, split)
        assert len(src) == m["samples"][split]
        ds = grain.MapDataset.source(src).shuffle(seed=1).map(lambda s: s)
        for i in range(len(ds)):
            s = ds[i]
            assert s.split == split and s.slide_id in store and s.question.count("<image>") == 1
            assert parse_trajectory(s.trajectory) == (s.findings, s.reasoning, s.answer)
            assert s.answer == s.diagnosis == store[s.slide_id].label
            assert set(s.entities) <= names and s.diagnosis in s.entities
    with pytest.raises(IndexError):
        SampleSource(prep, "val")[5]


def test_tfds_builder_reads_the_sample_store(prepared):
    import tensorflow_datasets as tfds
    from pathreasoner_jax.data.store import SampleSource
    from pathreasoner_jax.data.tfds_builder import NAME, build_tfds
    prep, _ = prepared
    data_dir = build_tfds(prep)
    ds = tfds.data_source(NAME, data_dir=data_dir, split="train")
    src = SampleSource(prep, "train")
    assert len(ds) == len(src)
    want = {src[i].sample_id: src[i] for i in range(len(src))}
    for i in range(len(ds)):
        ex = ds[i]
        s = want[ex["sample_id"].decode()]
        assert ex["answer"].decode() == s.answer and [f.decode() for f in ex["findings"]] == s.findings


def test_demo_tokenizer_has_single_token_tags(prepared):
    from pathreasoner_jax.tokenizer import load_tokenizer, special_ids
    from pathreasoner_jax.data.store import SampleSource
    prep, _ = prepared
    tok = load_tokenizer(os.path.join(prep, "tokenizer"))
    ids = special_ids(tok)
    s = SampleSource(prep, "train")[0]
    enc = tok(s.trajectory)["input_ids"]
    for t in ids.tags:
        assert enc.count(t) == 1


def test_rerun_after_sigkill_gives_identical_shards(corpus, prepared, tmp_path):
    from data_prep.cli import prepare
    prep_a, _ = prepared
    prep_b = str(tmp_path / "prep")
    code = ("import sys; from pathreasoner_jax.config import load_config; from data_prep.cli import prepare; "
            "prepare(load_config(None, sys.argv[1:]))")
    args = [f"data.slides_dir={corpus['slides_dir']}", f"data.reports_path={corpus['reports_path']}",
            f"data.prep_dir={prep_b}", "run.progress=false", "data.splits=[0.34, 0.33, 0.33]",
            "data.augment_per_sample=2"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    feats = os.path.join(prep_b, "features")
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(feats) and any(p.endswith(".h5") for p in os.listdir(feats)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    assert not os.path.exists(os.path.join(prep_b, "manifest.json"))
    assert prepare(_cfg(corpus, prep_b)) == 0
    assert not glob.glob(os.path.join(prep_b, "**", ".tmp-*"), recursive=True)
    shards_a = sorted(os.path.basename(p) for p in glob.glob(os.path.join(prep_a, "*.array_record")))
    shards_b = sorted(os.path.basename(p) for p in glob.glob(os.path.join(prep_b, "*.array_record")))
    assert shards_a == shards_b and len(shards_a) == 4
    for name in shards_a + ["entities.json"]:
        assert _sha(os.path.join(prep_a, name)) == _sha(os.path.join(prep_b, name)), name


def test_workers_write_disjoint_parts_then_merge(corpus, prepared, tmp_path):
    from data_prep.cli import prepare
    from pathreasoner_jax.data.store import SampleSource, SlideStore
    prep_a, _ = prepared
    prep_c = str(tmp_path / "prep")
    os.makedirs(prep_c)
    for sub in ("features", "samples"):  # reuse the per-slide caches: only sharding is redone
        shutil.copytree(os.path.join(prep_a, sub), os.path.join(prep_c, sub))
    cfg = _cfg(corpus, prep_c)
    assert prepare(cfg, num_workers=2, worker_index=0) == 0
    with pytest.raises(UserError, match=r"parts \[1\] of 2"):
        prepare(cfg, num_workers=2, merge_only=True)
    assert prepare(cfg, num_workers=2, worker_index=1) == 0
    assert prepare(cfg, num_workers=2, merge_only=True) == 0
    m = json.load(open(os.path.join(prep_c, "manifest.json")))
    paths = [s["path"] for s in m["shards"]["slides"]]
    assert paths == ["slides-00000-of-00002.array_record", "slides-00001-of-00002.array_record"]
    assert sorted(m["slides_ok"]) == json.load(open(os.path.join(prep_a, "manifest.json")))["slides_ok"]
    for split in ("train", "val", "test"):
        a, c = SampleSource(prep_a, split), SampleSource(prep_c, split)
        assert sorted(a[i].sample_id for i in range(len(a))) == sorted(c[i].sample_id for i in range(len(c)))
    assert SlideStore(prep_c)["demo-003"].features.shape == SlideStore(prep_a)["demo-003"].features.shape


def test_nothing_succeeded_exits_1(tmp_path):
    from data_prep.cli import prepare
    sd = tmp_path / "slides"
    sd.mkdir()
    (sd / "only.svs").write_bytes(b"garbage" * 50)
    cfg = load_config(None, [f"data.slides_dir={sd}", f"data.prep_dir={tmp_path / 'prep'}", "run.progress=false"])
    assert prepare(cfg) == 1
    m = json.load(open(tmp_path / "prep" / "manifest.json"))
    assert m["slides_ok"] == [] and m["slides_failed"][0]["path"].endswith("only.svs")


def test_precomputed_features_and_reference_conversations(tmp_path, shared_dir):
    """features_dir with a TRIDENT h5 and a SlideChat CSV, reports = the reference's JSON."""
    from data_prep.cli import prepare
    from pathreasoner_jax.data.store import SampleSource, SlideStore
    from pathreasoner_jax.slides.h5io import FeatureFile, write_features_h5
    fd = tmp_path / "feats"
    fd.mkdir()
    tcga = "TCGA-GV-A40G-01Z-00-DX1.AD1A709F-A10C-4E69-B4ED-6361777361FD"
    rng = np.random.default_rng(0)
    write_features_h5(str(fd / f"{tcga}.h5"), FeatureFile(rng.normal(size=(12, 512)).astype(np.float32),
                                                          np.arange(24).reshape(12, 2) * 256, {"patch_size": 256}))
    (fd / "chat.csv").write_text("x,y," + ",".join(map(str, range(512))) + "\n"
                                 + "\n".join(f"{i * 256},0," + ",".join(["0.5"] * 512) for i in range(3)) + "\n")
    ref = os.path.join(shared_dir, "reference-format", "llava_conversations_example.json")
    cfg = load_config(None, [f"data.features_dir={fd}", f"data.reports_path={ref}",
                             f"data.prep_dir={tmp_path / 'prep'}", "run.progress=false"])
    assert prepare(cfg) == 0
    m = json.load(open(tmp_path / "prep" / "manifest.json"))
    assert sorted(m["slides_ok"]) == sorted([tcga, "chat"])
    store = SlideStore(str(tmp_path / "prep"))
    assert store[tcga].features.shape == (12, 512) and store["chat"].coords[:, 0].tolist() == [0, 256, 512]
    assert store[tcga].cluster_ids.max() < 8
    train = SampleSource(str(tmp_path / "prep"), "train")
    assert [train[i].sample_id for i in range(len(train))] == ["train::0"]
    missing = [f for f in m["samples_failed"] if "no features for slide" in f["error"]]
    assert len(missing) == 10


def test_two_worker_features_and_prepare_equal_one_process(corpus, tmp_path):
    """`features` and `prepare` on 2 workers + merge give the one-process result: the same
    h5 features, samples (every field, same splits) and slides (stored chunked here)."""
    import h5py
    from data_prep.cli import prepare
    from data_prep.features import extract_folder
    from pathreasoner_jax.data.store import SampleSource, SlideStore
    one, two = str(tmp_path / "f1"), str(tmp_path / "f2")
    assert extract_folder(corpus["slides_dir"], one) == 0
    for i in (0, 1):
        assert extract_folder(corpus["slides_dir"], two, num_workers=2, worker_index=i) == 0
    m1, m2 = (json.load(open(os.path.join(d, "manifest.json"))) for d in (one, two))
    assert [s["slide_id"] for s in m1["slides_ok"]] == [s["slide_id"] for s in m2["slides_ok"]]
    assert sorted(f["path"] for f in m1["slides_failed"]) == sorted(f["path"] for f in m2["slides_failed"])
    for s in m1["slides_ok"]:
        with h5py.File(os.path.join(one, s["h5"])) as a, h5py.File(os.path.join(two, s["h5"])) as b:
            for k in ("features", "coords"):
                np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=f"{s['h5']} {k}")
    base = [f"data.reports_path={corpus['reports_path']}", "run.progress=false", "data.splits=[0.34, 0.33, 0.33]",
            "data.slide_chunk_rows=8"]
    p1, p2 = str(tmp_path / "p1"), str(tmp_path / "p2")
    assert prepare(load_config(None, base + [f"data.features_dir={one}", f"data.prep_dir={p1}"])) == 0
    cfg2 = load_config(None, base + [f"data.features_dir={two}", f"data.prep_dir={p2}"])
    for i in (0, 1):
        assert prepare(cfg2, num_workers=2, worker_index=i) == 0
    assert prepare(cfg2, num_workers=2, merge_only=True) == 0
    for split in ("train", "val", "test"):
        a, b = SampleSource(p1, split), SampleSource(p2, split)
        rows = lambda src: sorted((vars(src[i]) for i in range(len(src))), key=lambda r: r["sample_id"])
        assert rows(a) == rows(b), split
    s1, s2 = SlideStore(p1), SlideStore(p2)
    assert s1.ids() == s2.ids() and len(s1) >= 3
    assert any(s1[sid].chunks > 1 for sid in s1.ids())  # demo slides have more than 8 patches
    for sid in s1.ids():
        x, y = s1[sid], s2[sid]
        np.testing.assert_array_equal(np.asarray(x.features), np.asarray(y.features), err_msg=sid)
        np.testing.assert_array_equal(x.coords, y.coords)
        np.testing.assert_array_equal(x.cluster_ids, y.cluster_ids)
