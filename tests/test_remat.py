"""Per-layer rematerialisation changes memory, not numbers: a LoRA-only SFT step (frozen
base weights, the paper's 7B preset) with `model.remat` gives the loss and updated
gradients of the step without it. (nnx.remat failed here: it wrote the frozen weights back
from inside the gradient trace.)"""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathreasoner_jax.config import SFTConfig
from pathreasoner_jax.models import layers
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sft.step import make_sft_step
from pathreasoner_jax.sharding import make_mesh, use_mesh
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config


def _one_step(remat: bool, train_lora_only: bool, monkeypatch):
    # dropout keys fold in each linear's uid, counted from process start: both models count from 0
    monkeypatch.setattr(layers, "_uids", itertools.count())
    cfg = dataclasses.replace(tiny_config(lora=True), remat=remat)
    cfg.lora.dropout = 0.1  # the preset's LoRA dropout: the rng must reach the rematerialised layer
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with use_mesh(mesh):
        model = create_model(cfg, IMAGE_ID, mesh, seed=0)
    sft = SFTConfig(lr=1e-2, warmup_ratio=0.0, train_lora_only=train_lora_only)
    step, trainable, frozen, opt = make_sft_step(model, sft, True, mesh, total_steps=4)
    batch = {k: jnp.asarray(v) for k, v in tiny_batch().items()}
    loss, grads, _ = jax.jit(step.loss_and_grads)(trainable, frozen, batch, jax.random.key(3))
    return float(loss), jax.tree.leaves(jax.device_get(grads))


@pytest.mark.parametrize("train_lora_only", [True])
def test_remat_step_equals_plain_step(train_lora_only, monkeypatch):
    loss0, grads0 = _one_step(False, train_lora_only, monkeypatch)
    loss1, grads1 = _one_step(True, train_lora_only, monkeypatch)
    assert np.isfinite(loss0) and max(float(np.abs(g).max()) for g in grads0) > 0
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    scale = max(float(np.abs(g).max()) for g in grads0)
    for a, b in zip(grads1, grads0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
