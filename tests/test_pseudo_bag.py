"""Pseudo-bag masking and its prior, each against an independent expectation: the drop
rate q and the cluster frequencies over many draws, the trajectory masking rate p, and
Δ from occlusion — the cluster that carries the signal gets the largest Δ and prior."""
from __future__ import annotations

import numpy as np
import pytest

from pathreasoner_jax.data.encode import ExampleEncoder
from pathreasoner_jax.eval.entities import EntityLexicon
from pathreasoner_jax.records import SampleRecord, SlideRecord
from pathreasoner_jax.sft import prior as P
from sft_fixtures import QUESTION, make_tokenizer

DRAWS = 6000


def _slide(n=40, k=4, dim=8):
    coords = np.stack([np.arange(n) % 8, np.arange(n) // 8], 1) * 256
    return SlideRecord("s", np.zeros((n, dim), np.float32), coords, np.arange(n) % k)


def test_drop_rate_and_cluster_frequencies_follow_q_and_the_prior():
    slide, prior, q = _slide(), np.array([0.6, 0.3, 0.1, 0.0]), 0.4
    enc = ExampleEncoder(None, 5, sample_num=64, pseudo_bag_q=q, priors={"s": prior})
    rng = np.random.default_rng(0)
    dropped = []
    for _ in range(DRAWS):
        kept = set(slide.cluster_ids[enc.patches(slide, rng)].tolist())
        missing = {0, 1, 2, 3} - kept
        assert len(missing) <= 1
        dropped.append(missing.pop() if missing else -1)
    dropped = np.asarray(dropped)
    se = np.sqrt(q * (1 - q) / DRAWS)
    assert abs(np.mean(dropped >= 0) - q) < 4 * se
    freq = np.bincount(dropped[dropped >= 0], minlength=4) / np.sum(dropped >= 0)
    assert np.allclose(freq, prior, atol=0.03) and freq[3] == 0


def test_trajectory_masking_rate():
    enc = ExampleEncoder(None, 5, sample_num=8, mask_mode="loss", mask_rate=0.3)
    s = SampleRecord("x", "s", "train", QUESTION, [f"finding {i}" for i in range(5)],
                     [f"step {i}" for i in range(5)], "dx", "dx", [])
    rng = np.random.default_rng(1)
    picked = [len(enc.choose_steps(s, rng)) for _ in range(2000)]
    assert abs(np.mean(picked) / 10 - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20000)


def test_occlusion_delta_finds_the_signal_cluster(tmp_path, monkeypatch):
    """A stand-in model whose entity loss falls with the share of signal patches it sees
    (cluster 2 carries the signal): Δ is largest for cluster 2, ~0 for the others, and
    the prior puts its largest mass there."""
    tok, ids = make_tokenizer(str(tmp_path / "tok"))
    slide = _slide()
    slide.features[slide.cluster_ids == 2, 0] = 1.0

    def fake_loss(model, batch):
        f, v = np.asarray(batch["features"])[..., 0], np.asarray(batch["patch_valid"])
        return 2.0 - (f * v).sum(1) / (slide.features[:, 0] > 0).sum()
    monkeypatch.setattr(P, "per_row_entity_loss", fake_loss)
    enc = ExampleEncoder(tok, ids.image, sample_num=64)
    sample = SampleRecord("x", "s", "train", QUESTION, ["gland crowding"], ["crowded glands"], "adenocarcinoma",
                          "adenocarcinoma", ["gland crowding"])
    lex = EntityLexicon([{"name": "gland crowding"}])
    delta = P.slide_deltas(None, enc, sample, slide, lex, 4, [128, 256], ids.pad)
    assert delta[2] == pytest.approx(1.0) and np.allclose(np.delete(delta, 2), 0.0)
    prior = np.asarray(P.pseudo_bag_prior(delta, np.bincount(slide.cluster_ids), mu=0.7, tau=1.0, eps=0.02))
    assert int(np.argmax(prior)) == 2 and prior[2] > prior[0] and abs(prior.sum() - 1) < 1e-6
