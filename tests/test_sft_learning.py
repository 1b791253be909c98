"""The SFT step learns through the slide path, and sharding does not change it."""
import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.config import LLMConfig, ModelConfig, SFTConfig, SlideEncoderConfig
from pathreasoner_jax.data.encode import ExampleEncoder, collate
from pathreasoner_jax.data.loader import SFTLoader
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sft.step import make_sft_step
from pathreasoner_jax.sharding import make_mesh, use_mesh
from sft_fixtures import CLASSES, make_dataset, make_tokenizer


@pytest.fixture(scope="module")
def tok_ids(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _model_cfg(vocab):
    return ModelConfig(
        llm=LLMConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2),
        slide=dataclasses.replace(SlideEncoderConfig(), feature_dim=16, width=32, ffn_dim=64, num_heads=4,
                                  segment_lengths=[8, 16], dilations=[1, 2], dropout=0.0, drop_path=0.0),
        compute_dtype="float32", lora=dataclasses.replace(ModelConfig().lora, enabled=False))


def _train(tok, ids, samples, slides, steps, mesh, lr=1e-2, batch=8, seed=0):
    with use_mesh(mesh):
        model = create_model(_model_cfg(len(tok)), ids.image, mesh, seed=seed)
        enc = ExampleEncoder(tok, ids.image, sample_num=64)
        loader = SFTLoader(samples, slides, enc, batch, epochs=1000, seed=seed, length_buckets=[64, 96, 128],
                           pad_id=ids.pad)
        sft = SFTConfig(lr=lr, warmup_ratio=0.0, train_lora_only=False, grad_clip=1.0)
        step, t, f, o = make_sft_step(model, sft, False, mesh, steps)
        fn, losses = None, []
        for k in range(steps):
            b = {key: jnp.asarray(v) for key, v in loader.batch(k).items()}
            fn = fn or step.jitted(t, f, o, b)
            t, o, m = fn(t, f, o, b, jax.random.key(k), jnp.int32(k))
            losses.append(float(m["loss"]))
        return nnx.merge(step.graphdef, t, f), losses, enc


def test_overfits_a_handful_of_samples(tok_ids):
    tok, ids = tok_ids
    samples, slides = make_dataset(4)
    _, losses, _ = _train(tok, ids, samples, slides, steps=80, mesh=make_mesh(1, 1, 1, jax.devices()[:1]), batch=4)
    assert losses[0] > 2.0
    assert losses[-1] < 0.05, losses[-10:]


@nnx.jit
def _mean_loss(model, batch):
    s, n = sft_loss(model, batch, model.ctx())
    return s / n


def _answer_choice(model, enc, sample, slide, ids):
    """argmin over the class names of the teacher-forced loss of the whole trajectory."""
    scores = []
    for dx, (f, r) in CLASSES.items():
        cand = dataclasses.replace(sample, findings=f, reasoning=r, answer=dx)
        ex = enc.encode(cand, slide, np.random.default_rng(0))
        batch, _ = collate([ex], [slide], [64, 96, 128], 64, ids.pad)
        scores.append(float(_mean_loss(model, {k: jnp.asarray(v) for k, v in batch.items()})))
    return list(CLASSES)[int(np.argmin(scores))]


def test_the_slide_matters(tok_ids):
    """Trained briefly, the model names the class of the slide it is shown: right with the
    true features, and with another class's features it follows those instead."""
    tok, ids = tok_ids
    samples, slides = make_dataset(16, seed=1)
    model, losses, enc = _train(tok, ids, samples, slides, steps=50, mesh=make_mesh(1, 1, 1, jax.devices()[:1]))
    test_samples, test_slides = make_dataset(8, seed=2, split="test")
    true_hits = other_hits = 0
    for i, s in enumerate(test_samples):
        true_hits += _answer_choice(model, enc, s, test_slides[s.slide_id], ids) == s.answer
        other = test_samples[(i + 1) % len(test_samples)]  # the next slide has another class
        other_hits += _answer_choice(model, enc, s, test_slides[other.slide_id], ids) == s.answer
    assert true_hits / len(test_samples) >= 0.75, (true_hits, losses[-5:])
    assert other_hits / len(test_samples) <= 0.25


@pytest.mark.slow  # the sharded loss is checked fast in test_sharding.py; this one adds the full step
def test_sharded_step_equals_single_device(tok_ids):
    tok, ids = tok_ids
    samples, slides = make_dataset(8)
    _, single, _ = _train(tok, ids, samples, slides, steps=3, mesh=make_mesh(1, 1, 1, jax.devices()[:1]))
    _, sharded, _ = _train(tok, ids, samples, slides, steps=3, mesh=make_mesh(2, 2, 2))
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
