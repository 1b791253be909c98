"""Parity of our Qwen2.5-VL with transformers' Qwen2_5_VLForConditionalGeneration on a tiny
random model: vision tower, M-RoPE ids, logits on two left-padded rows with images of
different sizes, greedy decoding, and import → export → import."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from vl_fixtures import IMAGE_ID, WINDOW, make_hf_qwen_vl, two_row_batch
from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.vl.convert import load_qwen_vl, read_config, save_qwen_vl
from pathreasoner_jax.vl.preprocess import VisionGeometry, pack_images, rope_index_reference

GEOM = VisionGeometry(window_size=WINDOW)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("qwen_vl"))
    return make_hf_qwen_vl(d), load_qwen_vl(d), d


@pytest.fixture(scope="module")
def batch():
    ids, att, pix, grids, rows = two_row_batch(np.random.default_rng(0))
    packed = pack_images(rows, max_patches=128, geom=GEOM)
    vision = {k: jnp.asarray(v) for k, v in packed.items() if k != "token_valid"}
    return ids, att, pix, grids, vision, jnp.asarray(packed["token_valid"])


@nnx.jit
def _forward_logits(model, ids, valid, vision, token_valid):
    hidden, _ = model(ids, valid, vision, token_valid, model.ctx())
    return model.llm.logits(hidden)


def _logits(model, ids, att, vision, token_valid):
    """Jitted (the eager op-by-op path is slow, and once aborted a CI worker inside XLA)."""
    return _forward_logits(model, jnp.asarray(ids), jnp.asarray(att.astype(bool)), vision, token_valid)


def _hf_inputs(ids, att, pix, grids):
    import torch
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att), pixel_values=torch.tensor(pix),
                image_grid_thw=torch.tensor(grids), mm_token_type_ids=torch.tensor((ids == IMAGE_ID).astype(np.int64)))


def test_vision_tower_matches_transformers(pair, batch):
    import torch
    hf, model, _ = pair
    _, _, pix, grids, vision, token_valid = batch
    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(pix), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    ours = np.asarray(nnx.jit(lambda m, v: m.visual(v, m.ctx()))(model, vision))
    valid = np.asarray(token_valid)
    np.testing.assert_allclose(ours[valid], ref, atol=1e-5)  # rows in order: A, B | C


def test_mrope_positions_match_get_rope_index(pair, batch):
    import torch
    hf, model, _ = pair
    ids, att, pix, grids, vision, token_valid = batch
    _, valid, pos = nnx.jit(lambda m, *a: m.inputs(*a, m.ctx()))(model, jnp.asarray(ids), jnp.asarray(att.astype(bool)),
                                                                 vision, token_valid)
    ref, _ = hf.model.get_rope_index(torch.tensor(ids), torch.tensor((ids == IMAGE_ID).astype(np.int64)),
                                     image_grid_thw=torch.tensor(grids), attention_mask=torch.tensor(att))
    mask = att.astype(bool)
    ours = np.moveaxis(np.asarray(pos), -1, 0)
    np.testing.assert_array_equal(ours[:, mask], ref.numpy()[:, mask])
    twin = rope_index_reference(ids, mask, IMAGE_ID, [[g for g in grids[:2]], [grids[2]]])
    np.testing.assert_array_equal(ours[:, mask], twin[:, mask])


def test_logits_match_transformers(pair, batch):
    import torch
    hf, model, _ = pair
    ids, att, pix, grids, vision, token_valid = batch
    with torch.no_grad():
        ref = hf(**_hf_inputs(ids, att, pix, grids)).logits.numpy()
    ours = np.asarray(_logits(model, ids, att, vision, token_valid))
    mask = att.astype(bool)
    scale = np.abs(ref[mask]).max()
    assert np.abs(ours[mask] - ref[mask]).max() <= 1e-4 * max(scale, 1.0)


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["shared-prefix", "repeated"])
def test_greedy_decode_equals_generate(pair, batch, shared_prefix):
    import torch
    hf, model, _ = pair
    ids, att, pix, grids, vision, token_valid = batch
    with torch.no_grad():
        ref = hf.generate(**_hf_inputs(ids, att, pix, grids), max_new_tokens=16, min_new_tokens=16,
                          do_sample=False)[:, ids.shape[1]:].numpy()
    assert len({tuple(r) for r in ref.tolist()}) == 2 and len(set(ref[0].tolist())) > 4  # a discriminating case
    out = sample(model, jnp.asarray(ids), jnp.asarray(att.astype(bool)), vision, token_valid, jax.random.key(0),
                 params=SamplingParams(max_new_tokens=16, greedy=True, group_size=2, shared_prefix=shared_prefix),
                 eos_id=-1, pad_id=0)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), np.repeat(ref, 2, axis=0))


def test_import_export_import_is_bit_exact(pair, batch, tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    _, model, d = pair
    out = str(tmp_path / "export")
    save_qwen_vl(model, out, read_config(d))
    again = load_qwen_vl(out)
    a, b = (jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(m))) for m in (model, again))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    # transformers reads the export and computes the same logits
    ids, att, pix, grids, vision, token_valid = batch
    hf2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        ref = hf2(**_hf_inputs(ids, att, pix, grids)).logits.numpy()
    mask = att.astype(bool)
    ours = np.asarray(_logits(again, ids, att, vision, token_valid))
    assert np.abs(ours[mask] - ref[mask]).max() <= 1e-4 * max(np.abs(ref).max(), 1)


def test_in_memory_tensor_names_load_the_same(pair, tmp_path):
    """transformers' in-memory names (model.visual.*, model.language_model.*) — what some
    conversions save — read into the same parameters as the saved layout."""
    import shutil
    from safetensors.numpy import load_file, save_file
    _, model, d = pair
    out = tmp_path / "renamed"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    renamed = {("model." + k if k.startswith("visual.") else k.replace("model.", "model.language_model.", 1)
                if k.startswith("model.") else k): v for k, v in tensors.items()}
    assert any(k.startswith("model.language_model.layers.") for k in renamed)
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    again = load_qwen_vl(str(out))
    a, b = (jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(m))) for m in (model, again))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_missing_tensor_and_wrong_model_type_are_named(pair, tmp_path):
    import json
    import shutil
    from safetensors.numpy import load_file, save_file
    from pathreasoner_jax.core.errors import UserError
    _, _, d = pair
    out = tmp_path / "broken"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["visual.merger.mlp.0.weight"]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="visual.merger.mlp.0.weight missing"):
        load_qwen_vl(str(out))
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    with pytest.raises(UserError, match="is not qwen2_5_vl"):
        load_qwen_vl(str(out))
