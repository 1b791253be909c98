"""CONCH-v1 weight conversion on a tiny random checkpoint with CONCH's visual-tower layout
(timm ViT trunk + attentional pooler), made here with torch and saved as safetensors;
the JAX features must equal a plain-torch forward of the same weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from pathreasoner_jax.core.errors import UserError  # noqa: E402

W, LAYERS, HEADS, P, IMG, D, POOL_HEADS = 32, 2, 4, 8, 32, 16, 8  # CONCH: 8 pooler heads
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])  # CONCH (OpenAI CLIP) preprocessing
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


def tiny_state():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"visual.trunk.patch_embed.proj.weight": r(W, 3, P, P), "visual.trunk.patch_embed.proj.bias": r(W),
          "visual.trunk.cls_token": r(1, 1, W), "visual.trunk.pos_embed": r(1, 1 + (IMG // P) ** 2, W),
          "visual.trunk.norm.weight": 1 + r(W), "visual.trunk.norm.bias": r(W)}
    for i in range(LAYERS):
        b = f"visual.trunk.blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(W), b + "norm1.bias": r(W), b + "norm2.weight": 1 + r(W),
                   b + "norm2.bias": r(W), b + "attn.qkv.weight": r(3 * W, W), b + "attn.qkv.bias": r(3 * W),
                   b + "attn.proj.weight": r(W, W), b + "attn.proj.bias": r(W),
                   b + "mlp.fc1.weight": r(4 * W, W), b + "mlp.fc1.bias": r(4 * W),
                   b + "mlp.fc2.weight": r(W, 4 * W), b + "mlp.fc2.bias": r(W)})
    a = "visual.attn_pool_contrast."
    sd.update({a + "query": r(1, D), a + "ln_q.weight": 1 + r(D), a + "ln_q.bias": r(D),
               a + "ln_k.weight": 1 + r(W), a + "ln_k.bias": r(W),
               a + "attn.q_proj_weight": r(D, D), a + "attn.k_proj_weight": r(D, W),
               a + "attn.v_proj_weight": r(D, W), a + "attn.in_proj_bias": r(3 * D),
               a + "attn.out_proj.weight": r(D, D), a + "attn.out_proj.bias": r(D),
               "visual.ln_contrast.weight": 1 + r(D), "visual.ln_contrast.bias": r(D),
               "visual.proj_contrast": r(D, D), "text.token_embedding.weight": r(10, W)})
    return sd


def torch_reference(sd, img_u8):
    """encode_image(x, proj_contrast=False, normalize=False) of CONCH, written with torch ops."""
    F = torch.nn.functional
    x = torch.from_numpy(img_u8).float().permute(0, 3, 1, 2) / 255.0
    x = (x - MEAN[:, None, None]) / STD[:, None, None]
    t = F.conv2d(x, sd["visual.trunk.patch_embed.proj.weight"], sd["visual.trunk.patch_embed.proj.bias"], stride=P)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["visual.trunk.cls_token"].expand(len(t), -1, -1), t], 1) + sd["visual.trunk.pos_embed"]
    for i in range(LAYERS):
        p = lambda k: sd[f"visual.trunk.blocks.{i}.{k}"]  # noqa: E731
        h = F.layer_norm(t, (W,), p("norm1.weight"), p("norm1.bias"), 1e-6)
        b, n, _ = h.shape
        qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, n, 3, HEADS, W // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / (W // HEADS) ** 0.5).softmax(-1) @ v
        t = t + F.linear(att.transpose(1, 2).reshape(b, n, W), p("attn.proj.weight"), p("attn.proj.bias"))
        h = F.layer_norm(t, (W,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        t = t + F.linear(F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias"))
    t = F.layer_norm(t, (W,), sd["visual.trunk.norm.weight"], sd["visual.trunk.norm.bias"], 1e-6)
    a = "visual.attn_pool_contrast."
    mha = torch.nn.MultiheadAttention(D, POOL_HEADS, kdim=W, vdim=W)  # as CONCH's AttentionalPooler
    mha.load_state_dict({k[len(a + "attn."):]: v for k, v in sd.items() if k.startswith(a + "attn.")})
    kx = F.layer_norm(t, (W,), sd[a + "ln_k.weight"], sd[a + "ln_k.bias"]).permute(1, 0, 2)
    q = F.layer_norm(sd[a + "query"], (D,), sd[a + "ln_q.weight"], sd[a + "ln_q.bias"])
    out = mha(q.unsqueeze(1).repeat(1, kx.shape[1], 1), kx, kx, need_weights=False)[0].permute(1, 0, 2)
    return F.layer_norm(out[:, 0], (D,), sd["visual.ln_contrast.weight"], sd["visual.ln_contrast.bias"]).detach().numpy()


def test_conch_conversion_matches_torch(tmp_path):
    from pathreasoner_jax.slides.encoders import build_encoder
    sd = tiny_state()
    path = str(tmp_path / "conch_tiny.safetensors")
    save_file(sd, path)
    enc = build_encoder("conch_v1", path, batch_size=4, heads=HEADS)
    assert enc.dim == D and enc.input_size == IMG
    img = np.random.default_rng(0).integers(0, 256, (3, IMG, IMG, 3), dtype=np.uint8)
    with torch.no_grad():
        want = torch_reference(sd, img)
    got = enc(img)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conch_refuses_pickles_and_incomplete_checkpoints(tmp_path):
    from pathreasoner_jax.slides.conch import load_conch
    bin_path = tmp_path / "pytorch_model.bin"
    bin_path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(UserError, match="no pickle"):
        load_conch(str(bin_path))
    sd = tiny_state()
    del sd["visual.trunk.blocks.1.mlp.fc2.bias"]
    path = str(tmp_path / "broken.safetensors")
    save_file(sd, path)
    with pytest.raises(UserError, match="fc2"):
        load_conch(path, heads=HEADS, pooler_heads=POOL_HEADS)
