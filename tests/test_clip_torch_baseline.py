"""The open_clip baseline of `pathreasoner bench clip`: builds from a plain dict, has the
documented state-dict layout, round-trips weights, and trains with open_clip's InfoNCE."""
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("open_clip") is None:
    pytest.skip("open_clip not installed (pip install -r requirements-dev.txt)", allow_module_level=True)

from benchmarks.torch_baseline import clip_openclip as oc  # noqa: E402

CFG = dict(image_size=16, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
           vision_mlp_dim=64, vocab_size=64, context_length=12, text_width=14, text_layers=2,
           text_heads=2, text_mlp_dim=61,  # int(14 * (61 / 14)) == 60: exercises the ratio nudge
           embed_dim=16, quick_gelu=False)


def _model(seed=0, **over):
    torch.manual_seed(seed)
    return oc.build_openclip({**CFG, **over})


def _batch(n=8, seed=0):
    """n (pixels NCHW, tokens) pairs; each caption ends in the end-of-text id V-1 (the largest,
    as open_clip's argmax pooling expects), then 0 padding."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(n, 3, CFG["image_size"], CFG["image_size"])).astype(np.float32)
    tokens = np.zeros((n, CFG["context_length"]), np.int64)
    for i in range(n):
        length = 3 + i % 6
        tokens[i, :length] = rng.integers(1, CFG["vocab_size"] - 1, length)
        tokens[i, length] = CFG["vocab_size"] - 1
    return pixels, tokens


def _expected_shapes():
    W, D, E, V, T = 32, 14, 16, 64, 12
    shapes = {
        "positional_embedding": (T, D), "text_projection": (D, E), "logit_scale": (),
        "visual.class_embedding": (W,), "visual.positional_embedding": (2 * 2 + 1, W),
        "visual.proj": (W, E), "visual.conv1.weight": (W, 3, 8, 8),
        "token_embedding.weight": (V, D),
    }
    for ln, x in (("visual.ln_pre", W), ("visual.ln_post", W), ("ln_final", D)):
        shapes[f"{ln}.weight"] = shapes[f"{ln}.bias"] = (x,)
    for prefix, x, f in (("visual.transformer", W, 64), ("transformer", D, 61)):
        for i in range(2):
            b = f"{prefix}.resblocks.{i}."
            shapes.update({
                b + "ln_1.weight": (x,), b + "ln_1.bias": (x,),
                b + "attn.in_proj_weight": (3 * x, x), b + "attn.in_proj_bias": (3 * x,),
                b + "attn.out_proj.weight": (x, x), b + "attn.out_proj.bias": (x,),
                b + "ln_2.weight": (x,), b + "ln_2.bias": (x,),
                b + "mlp.c_fc.weight": (f, x), b + "mlp.c_fc.bias": (f,),
                b + "mlp.c_proj.weight": (x, f), b + "mlp.c_proj.bias": (x,),
            })
    return shapes


def test_builds_with_the_documented_layout():
    model = _model()
    state = oc.state_numpy(model)
    assert {k: v.shape for k, v in state.items()} == _expected_shapes()
    assert "attn_mask" not in state and model.attn_mask.shape == (12, 12)  # non-persistent
    assert state["logit_scale"] == pytest.approx(np.log(1 / 0.07), rel=1e-6)
    gelu = model.transformer.resblocks[0].mlp.gelu
    assert isinstance(gelu, torch.nn.GELU) and gelu.approximate == "none"
    quick = _model(quick_gelu=True).visual.transformer.resblocks[0].mlp.gelu
    assert type(quick).__name__ == "QuickGELU"


def test_text_pools_at_the_largest_token_id():
    model = _model().eval()
    _, tokens = _batch(2)
    after, before = tokens.copy(), tokens.copy()
    eot = int(tokens[0].argmax())
    after[0, eot + 1] = 5  # behind the pooled position: the causal mask hides it
    before[0, eot - 1] = (tokens[0, eot - 1] % 60) + 1  # a different id ahead of it
    with torch.no_grad():
        enc = [model.encode_text(torch.from_numpy(t))[0].numpy() for t in (tokens, after, before)]
    np.testing.assert_allclose(enc[1], enc[0], atol=1e-6)
    assert np.abs(enc[2] - enc[0]).max() > 1e-4


def test_state_round_trip_is_strict():
    src, dst = _model(0).eval(), _model(1).eval()
    pixels, tokens = (torch.from_numpy(a) for a in _batch(4))
    oc.load_state(dst, oc.state_numpy(src))
    with torch.no_grad():
        for a, b in zip(src(pixels, tokens), dst(pixels, tokens)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = oc.state_numpy(src)
    with pytest.raises(RuntimeError, match="Missing"):
        oc.load_state(dst, {k: v for k, v in state.items() if k != "visual.proj"})
    with pytest.raises(RuntimeError, match="size mismatch"):
        oc.load_state(dst, {**state, "visual.proj": state["visual.proj"].T})


def _numpy_infonce(img, txt, scale):
    """(CE(scale·I·Tᵀ, diag) + CE(scale·T·Iᵀ, diag)) / 2 in float64."""
    logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
    diag = np.arange(len(img))

    def ce(z):
        m = z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
        return float((lse - z[diag, diag]).mean())
    return (ce(logits) + ce(logits.T)) / 2


def test_clip_loss_matches_numpy_infonce_and_training_reduces_it():
    model = _model()
    pixels, tokens = _batch(8)
    with torch.no_grad():
        img, txt, scale = model(torch.from_numpy(pixels), torch.from_numpy(tokens))
    expected = _numpy_infonce(img.numpy(), txt.numpy(), float(scale))
    assert float(oc.ClipLoss()(img, txt, scale)) == pytest.approx(expected, abs=1e-5)

    step = oc.train_step_fn(model, lr=1e-3, weight_decay=0.1)
    losses = [step(pixels, tokens) for _ in range(6)]
    assert losses[0] == pytest.approx(expected, abs=1e-5)  # the step reports its pre-update loss
    assert losses[5] < losses[0] - 0.1, losses  # loss after 5 steps
    decayed = {id(p) for p in step.optimizer.param_groups[1]["params"]}
    assert id(model.visual.proj) in decayed and id(model.logit_scale) not in decayed
    assert id(model.visual.ln_pre.weight) not in decayed


def test_time_steps_counts_only_the_timed_calls():
    calls = []

    def step(pixels, tokens):
        calls.append(pixels)
        return 0.0
    times = oc.time_steps(step, [("a", None), ("b", None)], warmup=3, repeats=4)
    assert len(times) == 4 and all(t >= 0 for t in times)
    assert calls == ["a", "b", "a", "b", "a", "b", "a"]  # cycles over the batches
