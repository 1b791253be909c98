"""Patho-CLIP model parity with transformers' CLIPModel: import, forward, export, re-import."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pathreasoner_jax.clip.convert import hf_state, load_hf, load_openclip, openclip_state, save_hf  # noqa: E402
from pathreasoner_jax.clip.model import ClipModelConfig, TowerConfig  # noqa: E402

EOS = 5


def _hf_model(tmp_path, act="quick_gelu", eos=EOS):
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=12, hidden_act=act, eos_token_id=eos,
                         bos_token_id=4, pad_token_id=eos),
        vision_config=dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=act),
        projection_dim=24)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # HF zero-inits nothing we could miss, but make biases and norms non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "hf"
    model.save_pretrained(path, safe_serialization=True)
    return model, str(path)


def _batch(rng, eos=EOS):
    pixels = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    ids = np.full((3, 12), eos, np.int64)
    mask = np.zeros((3, 12), np.int64)
    for i, n in enumerate((12, 7, 3)):  # full, padded, short; eos at the end of each
        ids[i, 0] = 4
        ids[i, 1:n - 1] = rng.integers(6, 97, n - 2)
        ids[i, n - 1] = eos
        mask[i, :n] = 1
    return pixels, ids, mask


def _ours(model, pixels, ids, mask):
    img, txt = model(np.transpose(pixels, (0, 2, 3, 1)), ids.astype(np.int32), mask.astype(np.int32))
    scale = float(np.exp(np.asarray(model.logit_scale[...])))
    return np.asarray(img), np.asarray(txt), scale * np.asarray(txt) @ np.asarray(img).T


def _theirs(model, pixels, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    pixel_values=torch.tensor(pixels))
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_text.numpy()


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_import_matches_transformers(tmp_path, act):
    hf, path = _hf_model(tmp_path, act)
    model, c = load_hf(path)
    assert c.act == act and c.pool == "eos" and c.eos_token_id == EOS and c.num_patches == 16
    batch = _batch(np.random.default_rng(0))
    for ours, theirs in zip(_ours(model, *batch), _theirs(hf, *batch)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_legacy_eos_id_pools_at_the_largest_id(tmp_path):
    hf, path = _hf_model(tmp_path, eos=2)
    model, c = load_hf(path)
    assert c.pool == "argmax"
    pixels, ids, mask = _batch(np.random.default_rng(1), eos=96)  # the end token is the largest id
    for ours, theirs in zip(_ours(model, pixels, ids, mask), _theirs(hf, pixels, ids, mask)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_export_loads_in_transformers_and_round_trips(tmp_path):
    hf, path = _hf_model(tmp_path)
    model, _ = load_hf(path)
    out = save_hf(model, str(tmp_path / "export"))
    again = transformers.CLIPModel.from_pretrained(out).eval()
    batch = _batch(np.random.default_rng(2))
    for a, b in zip(_theirs(again, *batch), _theirs(hf, *batch)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    back, _ = load_hf(out)
    a, b = hf_state(model), hf_state(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_openclip_layout_round_trip():
    # open_clip pools at the largest id: the model we start from must too, for its text embeddings to match
    c = ClipModelConfig(32, 8, TowerConfig(40, 2, 4, 56), TowerConfig(32, 2, 4, 48), 97, 12, 24, pool="argmax")
    from pathreasoner_jax.clip.model import build_clip
    model = build_clip(c, seed=3)
    sd = openclip_state(model)
    assert sd["visual.transformer.resblocks.1.attn.in_proj_weight"].shape == (120, 40)
    assert sd["visual.conv1.weight"].shape == (40, 3, 8, 8) and sd["visual.proj"].shape == (40, 24)
    back, c2 = load_openclip(sd, c)
    assert c2.pool == "argmax"
    rng = np.random.default_rng(4)
    px = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(0, 97, (2, 12)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(back.encode_image(px)), np.asarray(model.encode_image(px)))
    mask = np.ones_like(ids)
    np.testing.assert_array_equal(np.asarray(back.encode_text(ids, mask)), np.asarray(model.encode_text(ids, mask)))


def test_embeddings_equal_open_clips():
    import importlib.util
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (requirements-dev.txt)")
    from benchmarks.torch_baseline.clip_openclip import build_openclip, load_state
    from pathreasoner_jax.clip.model import build_clip
    c = ClipModelConfig(32, 8, TowerConfig(40, 2, 4, 56), TowerConfig(32, 2, 4, 48), 97, 12, 24, pool="argmax")
    ours = build_clip(c, seed=5)
    theirs = build_openclip(dict(image_size=32, patch_size=8, vision_width=40, vision_layers=2, vision_heads=4,
                                 vision_mlp_dim=56, vocab_size=97, context_length=12, text_width=32, text_layers=2,
                                 text_heads=4, text_mlp_dim=48, embed_dim=24, quick_gelu=False)).eval()
    load_state(theirs, openclip_state(ours))
    rng = np.random.default_rng(6)
    px = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    ids = rng.integers(1, 90, (2, 12))
    ids[0, 5], ids[1, 11] = 96, 96  # end of text: the largest id, as open_clip pools (padding after it is 0)
    ids[0, 6:] = 0
    with torch.no_grad():
        img_t = theirs.encode_image(torch.tensor(px)).numpy()
        txt_t = theirs.encode_text(torch.tensor(ids)).numpy()
    img = np.asarray(ours.encode_image(np.transpose(px, (0, 2, 3, 1))))
    txt = np.asarray(ours.encode_text(ids.astype(np.int32), np.ones_like(ids, np.int32)))
    np.testing.assert_allclose(img, img_t, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, txt_t, atol=1e-5, rtol=1e-5)
