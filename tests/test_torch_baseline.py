"""The PyTorch baseline computes what our JAX code computes, on the same weights (fp32)."""
import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks.torch_baseline.rollout import reference_rollout  # noqa: E402
from benchmarks.torch_baseline.sft import make_torch_sft, to_torch_batch  # noqa: E402
from benchmarks.torch_baseline.transfer import module_state_dict, torch_vlm_from_ours  # noqa: E402
from benchmarks.torch_baseline.vlm import sft_loss as torch_sft_loss  # noqa: E402
from pathreasoner_jax.config import SFTConfig, SlideEncoderConfig  # noqa: E402
from pathreasoner_jax.generate import SamplingParams, sample  # noqa: E402
from pathreasoner_jax.hf.torch_longnet import LongNet as TorchLongNet  # noqa: E402
from hf_fixtures import perturb_params  # noqa: E402
from pathreasoner_jax.models.factory import create_model  # noqa: E402
from pathreasoner_jax.models.layers import Ctx  # noqa: E402
from pathreasoner_jax.models.longnet import LongNet  # noqa: E402
from pathreasoner_jax.sft.loss import sft_loss  # noqa: E402
from pathreasoner_jax.sft.step import make_sft_step  # noqa: E402
from pathreasoner_jax.sharding import make_mesh  # noqa: E402
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config  # noqa: E402


def _no_dropout(cfg):
    cfg.slide = dataclasses.replace(cfg.slide, dropout=0.0, drop_path=0.0)
    cfg.lora.dropout = 0.0
    return cfg


@nnx.jit
def _our_loss(model, batch):
    return sft_loss(model, batch, model.ctx())


@pytest.fixture(scope="module", params=["untied-lora", "tied-full"])
def pair(request):
    cfg = _no_dropout(tiny_config(lora=request.param.endswith("lora")))
    cfg.llm.tie_word_embeddings = request.param.startswith("tied")
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model = create_model(cfg, IMAGE_ID, mesh, seed=1)
    perturb_params(model, seed=2, scale=0.1)
    return cfg, mesh, model, torch_vlm_from_ours(model, cfg)


@pytest.mark.parametrize("feature_dim,segments,dilations", [
    (16, [8, 16, 32], [1, 2, 8]),  # r = 8 > H = 4
    (32, [8, 16, 32], [1, 2, 8]),
    (16, [6, 12], [1, 4]),  # segments that the dilation does not divide
], ids=["in_proj", "no_in_proj", "ragged_segments"])
def test_longnet_matches_ours_with_padding(feature_dim, segments, dilations):
    cfg = dataclasses.replace(SlideEncoderConfig(), feature_dim=feature_dim, width=32, ffn_dim=48, num_heads=4,
                              segment_lengths=segments, dilations=dilations)
    ours = LongNet(cfg, nnx.Rngs(0))
    perturb_params(ours, seed=3, scale=0.1)
    theirs = TorchLongNet(cfg).eval()
    sd = module_state_dict(ours, "")
    assert set(sd) == set(theirs.state_dict())
    theirs.load_state_dict(sd)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 37, feature_dim)).astype(np.float32)
    valid = np.ones((3, 37), bool)
    valid[1, 20:] = False  # a short slide
    valid[2, ::5] = False  # holes
    want = np.asarray(nnx.jit(lambda m, a, b: m(a, b, Ctx()))(ours, jnp.asarray(x), jnp.asarray(valid)))
    with torch.no_grad():
        got = theirs(torch.from_numpy(x), torch.from_numpy(valid)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.all(got[~valid] == 0)


def test_sft_loss_matches_ours(pair):
    cfg, _, model, tmodel = pair
    batch = tiny_batch(seed=5)
    s, n = _our_loss(model, jax.tree.map(jnp.asarray, batch))
    with torch.no_grad():
        ts, tn = torch_sft_loss(tmodel, to_torch_batch(batch))
    assert float(tn) == float(n) == batch["loss_weight"].sum()  # every weighted token is valid here
    assert abs(float(ts) / float(tn) - float(s) / float(n)) < 1e-4


@pytest.mark.slow  # compiles a train step (~30 s on a shared 2-core machine)
def test_sft_step_matches_ours(pair):
    """One AdamW step on each side (same lr, clipping active), then the same loss again."""
    cfg, mesh, model, tmodel = pair
    if not cfg.lora.enabled:
        pytest.skip("one variant is enough for the step (the loss test covers tied weights)")
    sft = SFTConfig(lr=1e-3, warmup_ratio=0.0, grad_clip=0.5, weight_decay=0.01, train_lora_only=True)
    batch = tiny_batch(seed=6)
    tm = torch_vlm_from_ours(model, cfg)
    graphdef, state = nnx.split(model)
    ours = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))  # the step donates (deletes) its inputs
    step, T, F, O = make_sft_step(ours, sft, cfg.lora.enabled, mesh, total_steps=10)
    jb = jax.tree.map(jnp.asarray, batch)
    T, O, m = step.jitted(T, F, O, jb)(T, F, O, jb, jax.random.key(0), jnp.int32(0))
    after = nnx.merge(step.graphdef, T, F)
    tstep, _ = make_torch_sft(tm, sft, cfg.lora.enabled, total_steps=10)
    tloss = float(tstep(to_torch_batch(batch)))
    assert abs(tloss - float(m["loss"])) < 1e-4
    s, n = _our_loss(after, jb)
    with torch.no_grad():
        ts, tn = torch_sft_loss(tm, to_torch_batch(batch))
    before = float(m["loss"])
    assert abs(float(s / n) - before) > 1e-3  # the step moved the loss, so the check below has teeth
    assert abs(float(ts / tn) - float(s / n)) < 1e-4


def test_greedy_rollout_matches_our_sampler(pair):
    cfg, _, model, tmodel = pair
    if not cfg.lora.enabled:
        pytest.skip("one variant is enough (the loss test covers tied weights)")
    b = tiny_batch(batch=4, seed=7)
    ids, tv, f, pv = (b[k][[0, 2]] for k in ("ids", "text_valid", "features", "patch_valid"))  # padded patches
    tv[:] = True  # generation continues after the last prompt token
    params = SamplingParams(max_new_tokens=10, greedy=True, group_size=3)
    ours = sample(model, jnp.asarray(ids), jnp.asarray(tv), jnp.asarray(f), jnp.asarray(pv), jax.random.key(0),
                  params=params, eos_id=-1, pad_id=0)
    tb = to_torch_batch({"ids": ids, "tv": tv, "f": f, "pv": pv})
    theirs = reference_rollout(tmodel.eval(), tb["ids"], tb["tv"], tb["f"], tb["pv"], group_size=3,
                               max_new_tokens=10, greedy=True)
    np.testing.assert_array_equal(theirs.numpy(), np.asarray(ours["tokens"]))
