"""Parity of our Qwen2 with transformers' Qwen2ForCausalLM, and HF import/export."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hf_fixtures import make_hf_qwen2, padded_prompts, tiny_model_config
from pathreasoner_jax.generate import SamplingParams, sample
from pathreasoner_jax.hf.export import export_llm
from pathreasoner_jax.hf.weights import open_checkpoint_files
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.models.qwen2 import positions_from_valid


@pytest.fixture(scope="module", params=[(True, 1e4), (False, 1e6)], ids=["tied", "untied-theta1e6"])
def hf_pair(request, tmp_path_factory):
    """The untied model has Qwen2.5's rope_theta 1e6, so the config's theta must reach RoPE."""
    d = str(tmp_path_factory.mktemp("hf"))
    tied, theta = request.param
    torch_model = make_hf_qwen2(d, tied=tied, rope_theta=theta)
    model = create_model(tiny_model_config(d), image_token_id=299)
    return torch_model, model, d


def _our_logits(model, ids, att):
    valid = jnp.asarray(att.astype(bool))
    ctx = model.ctx()
    hidden, _ = model.llm(model.llm.embed(jnp.asarray(ids), ctx), positions_from_valid(valid), valid, ctx)
    return np.asarray(model.llm.logits(hidden))


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_logits_match_transformers(hf_pair, left):
    import torch
    torch_model, model, _ = hf_pair
    ids, att = padded_prompts(np.random.default_rng(0), left)
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att)).logits.numpy()
    ours = _our_logits(model, ids, att)
    real = att.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


def test_greedy_kv_cache_decoding_matches_generate(hf_pair):
    import torch
    torch_model, model, _ = hf_pair
    ids, att = padded_prompts(np.random.default_rng(1), left=True)
    with torch.no_grad():
        ref = torch_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att),
                                   max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = sample(model, jnp.asarray(ids), jnp.asarray(att.astype(bool)), None, None, jax.random.key(0),
                 params=SamplingParams(max_new_tokens=32, greedy=True), eos_id=-1, pad_id=0)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), ref[:, ids.shape[1]:].numpy())


def test_import_export_import_is_bit_exact(hf_pair, tmp_path):
    torch_model, model, src = hf_pair
    out = str(tmp_path / "export")
    export_llm(model.llm, tiny_model_config(src).llm, out)
    a, b = open_checkpoint_files(src), open_checkpoint_files(out)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name].tensor(name), b[name].tensor(name), err_msg=name)
    again = create_model(tiny_model_config(out), image_token_id=299)
    for (pa, va), (pb, vb) in zip(jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, _llm_arrays(model))),
                                  jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, _llm_arrays(again)))):
        np.testing.assert_array_equal(va, vb, err_msg=str(pa))


def _llm_arrays(model):
    from flax import nnx
    return nnx.state(model.llm, nnx.Param).to_pure_dict()


def test_sharded_safetensors_export_reads_back(hf_pair, tmp_path):
    """Export split across files with an index; transformers loads it and gives the same logits."""
    import torch
    from transformers import Qwen2ForCausalLM
    torch_model, model, src = hf_pair
    out = str(tmp_path / "sharded")
    export_llm(model.llm, tiny_model_config(src).llm, out, max_shard_bytes=40_000)
    assert len([f for f in __import__("os").listdir(out) if f.endswith(".safetensors")]) > 1
    reloaded = Qwen2ForCausalLM.from_pretrained(out).eval()
    ids, att = padded_prompts(np.random.default_rng(2), left=False)
    with torch.no_grad():
        a = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att)).logits
        b = reloaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att)).logits
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_lora_merge_matches_unmerged_forward(tmp_path):
    from flax import nnx
    from pathreasoner_jax.models.layers import LoRAParam
    make_hf_qwen2(str(tmp_path), tied=False)
    model = create_model(tiny_model_config(str(tmp_path), lora=True), image_token_id=299)
    # give the adapters non-zero weights, then compare adapter forward vs merged base forward
    state = nnx.state(model, LoRAParam)
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    nnx.update(model, jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape), state))
    ids, att = padded_prompts(np.random.default_rng(3), left=True)
    with_adapters = _our_logits(model, ids, att)
    base_only = np.asarray(_logits_no_lora(model, ids, att))
    assert np.abs(with_adapters - base_only).max() > 1e-3  # the adapters do something
    export_llm(model.llm, tiny_model_config(str(tmp_path), lora=True).llm, str(tmp_path / "merged"))
    merged = create_model(tiny_model_config(str(tmp_path / "merged")), image_token_id=299)
    np.testing.assert_allclose(_our_logits(merged, ids, att), with_adapters, atol=1e-4)


def _logits_no_lora(model, ids, att):
    valid = jnp.asarray(att.astype(bool))
    ctx = model.ctx(use_lora=False)
    hidden, _ = model.llm(model.llm.embed(jnp.asarray(ids), ctx), positions_from_valid(valid), valid, ctx)
    return model.llm.logits(hidden)
