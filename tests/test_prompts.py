"""Fixed-shape prompt batches never cut a prompt (image slots) or a reference (ROUGE-L)."""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from pathreasoner_jax.config import load_config
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.data.prompts import REF_MULTIPLE, PromptBuilder
from sft_fixtures import make_dataset, make_tokenizer


def _Entities():
    from pathreasoner_jax.data.store import Entities
    return Entities({"entities": [{"name": "a"}], "similarity": []})


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tok") / "tok"))


def _builder(tok, samples, slides, buckets=(64, 128, 256, 512)):
    t, ids = tok
    cfg = load_config(None, ["data.sample_num=12", f"data.length_buckets={list(buckets)}"])
    rt = types.SimpleNamespace(tokenizer=t, ids=ids, cfg=cfg)
    return PromptBuilder(rt, samples, slides, _Entities())


def test_long_reference_is_kept_whole(tok):
    samples, slides = make_dataset(4)
    long_answer = " ".join(["invasive ductal carcinoma"] * 30)
    samples[2] = dataclasses.replace(samples[2], answer=long_answer)
    b = _builder(tok, samples, slides)
    n_ref = len(tok[0](long_answer, add_special_tokens=False)["input_ids"])
    assert n_ref > 32 and b.ref_len >= n_ref and b.ref_len % REF_MULTIPLE == 0
    batch = b.batch_rows([samples[2], samples[0]])
    ref = np.asarray(batch["ref_ids"])[0][np.asarray(batch["ref_mask"])[0]]
    assert tok[0].decode(ref.tolist()) == long_answer


def test_every_image_slot_survives_and_a_too_long_prompt_is_an_error(tok):
    samples, slides = make_dataset(3)
    b = _builder(tok, samples, slides)
    batch = b.batch_rows(samples)
    image = tok[1].image
    assert (np.asarray(batch["ids"]) == image).sum(1).tolist() == [12, 12, 12]
    with pytest.raises(UserError, match="add a larger bucket"):
        _builder(tok, samples, slides, buckets=(16,))
    wordy = dataclasses.replace(samples[0], question="why " * 200 + samples[0].question)
    with pytest.raises(UserError, match="longer than this run's prompt length"):
        b.batch_rows([wordy])


def test_padding_that_holds_the_image_id_takes_no_patch():
    """The k-th *valid* image token takes patch k: a padded position with the image id
    (left padding filled with that id) must not shift the real slots onto later patches."""
    import jax.numpy as jnp
    from flax import nnx

    from pathreasoner_jax.models.vlm import PathVLM
    from tiny_vlm import IMAGE_ID, tiny_config

    model = PathVLM(tiny_config(lora=False), nnx.Rngs(0), IMAGE_ID)
    feats = np.random.default_rng(0).standard_normal((1, 3, 16)).astype(np.float32)
    pv = np.ones((1, 3), bool)
    clean = np.array([[9, 9, IMAGE_ID, IMAGE_ID, IMAGE_ID, 7]], np.int32)
    padded = clean.copy()
    padded[0, :2] = IMAGE_ID  # padding positions holding the image id
    valid = np.array([[False, False, True, True, True, True]])
    ctx = model.ctx()
    x_clean, _ = model.embed_inputs(jnp.asarray(clean), jnp.asarray(valid), jnp.asarray(feats), jnp.asarray(pv), ctx)
    x_pad, _ = model.embed_inputs(jnp.asarray(padded), jnp.asarray(valid), jnp.asarray(feats), jnp.asarray(pv), ctx)
    slide = model.slide_tokens(jnp.asarray(feats), jnp.asarray(pv), ctx)
    np.testing.assert_allclose(np.asarray(x_pad)[0, 2:], np.asarray(x_clean)[0, 2:], atol=1e-6)
    np.testing.assert_allclose(np.asarray(x_pad)[0, 2:5], np.asarray(slide)[0], atol=1e-6)
