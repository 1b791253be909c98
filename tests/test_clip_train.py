"""Patho-CLIP end to end on a tiny store: train, exact resume, clip-eval's files, clip-export →
transformers, and the exported tower as the `patho_clip` patch encoder."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from pathreasoner_jax.cli import main
from pathreasoner_jax.clip.preprocess import train_clip_tokenizer
from pathreasoner_jax.clip.records import ImageText, write_store

CLASSES = ["red tumour", "blue stroma"]


def _png(colour, rng) -> bytes:
    px = np.clip(np.asarray(colour)[None, None] + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    recs = {s: [] for s in ("train", "val", "test")}
    for i in range(48):
        label = i % 2
        split = "train" if i < 32 else "val" if i < 36 else "test"
        recs[split].append(ImageText(_png((200, 40, 40) if label == 0 else (40, 40, 200), rng),
                                     f"an image of {CLASSES[label]} number {i % 7}", label, CLASSES[label], f"t{i}"))
    data = tmp / "data"
    write_store(str(data), recs, CLASSES)
    train_clip_tokenizer([r.caption for v in recs.values() for r in v] + CLASSES + ["an h&e image of"],
                         str(data / "tokenizer"), vocab_size=200)
    cfg = tmp / "clip.yaml"
    cfg.write_text(f"""
run: {{name: t, root: {tmp / 'runs'}, progress: false}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
clip:
  data_dir: {data}
  image_size: 32
  context_length: 12
  batch_size: 8
  grad_accum: 2
  max_steps: 4
  checkpoint_every: 2
  lr: 1.0e-3
  eval_split: test
  eval_batch_size: 8
""")
    return tmp, str(cfg)


def _params(path):
    from flax import nnx
    from pathreasoner_jax.checkpoint import params_dict, restore_params
    from pathreasoner_jax.clip.build import build_model
    from pathreasoner_jax.clip.preprocess import load_clip_tokenizer
    from pathreasoner_jax.config import load_config
    cfg = load_config(path[0], path[1])
    model, _ = build_model(cfg, load_clip_tokenizer(cfg.clip.data_dir + "/tokenizer"))
    restore_params(path[2], model)
    return jax_leaves(params_dict(nnx.state(model)))


def jax_leaves(d):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(d)]


def test_interrupted_run_resumes_exactly(run):
    from pathreasoner_jax.clip.trainer import train_clip
    from pathreasoner_jax.config import load_config
    tmp, cfg_path = run
    straight = load_config(cfg_path, ["run.name=straight"])
    train_clip(straight)
    broken = load_config(cfg_path, ["run.name=broken"])
    train_clip(broken, stop_after=2)
    assert not os.path.exists(tmp / "runs/broken/checkpoints/clip/DONE")
    train_clip(broken)  # resumes at step 2
    assert os.path.exists(tmp / "runs/broken/checkpoints/clip/DONE")
    logs = [json.loads(x) for x in open(tmp / "runs/broken/metrics/clip.jsonl")]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    a = _params((cfg_path, ["run.name=straight"], str(tmp / "runs/straight/checkpoints/clip")))
    b = _params((cfg_path, ["run.name=broken"], str(tmp / "runs/broken/checkpoints/clip")))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    first = [json.loads(x) for x in open(tmp / "runs/straight/metrics/clip.jsonl")]
    assert np.isfinite(first[-1]["loss"]) and first[0]["logit_scale"] == pytest.approx(1 / 0.07, rel=0.02)


def test_eval_export_and_patch_encoder(run):
    tmp, cfg_path = run
    over = ["run.name=straight"]
    assert main(["clip-eval", "--config", cfg_path, *over]) == 0
    res = json.load(open(tmp / "runs/straight/clip_eval/clip.json"))
    zs = res["zero_shot"]
    assert res["pairs"] == 12 and zs["n"] == 12 and zs["class_names"] == CLASSES
    assert sum(map(sum, zs["confusion_matrix"])) == 12 and 0.0 <= zs["accuracy"] <= 1.0
    assert set(res["retrieval"]) >= {"image_to_text_R@1", "text_to_image_R@10"}
    assert Image.open(tmp / "runs/straight/clip_eval/clip_confusion.png").size[0] > 50
    out = tmp / "export"
    assert main(["clip-export", "--config", cfg_path, *over, "--out", str(out)]) == 0

    torch = pytest.importorskip("torch")
    import transformers
    hf = transformers.CLIPModel.from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok.eos_token_id == hf.config.text_config.eos_token_id
    from pathreasoner_jax.clip.preprocess import OPENAI_MEAN, OPENAI_STD
    from pathreasoner_jax.slides.encoders import build_encoder
    enc = build_encoder("patho_clip", str(out), batch_size=4)
    rng = np.random.default_rng(1)
    patches = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    feats = enc(patches)
    px = (patches / 255.0 - np.asarray(OPENAI_MEAN)) / np.asarray(OPENAI_STD)
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=torch.tensor(px.transpose(0, 3, 1, 2), dtype=torch.float32))
    ref = getattr(ref, "pooler_output", ref).numpy()
    ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    assert feats.shape == (6, hf.config.projection_dim)
    np.testing.assert_allclose(feats, ref, atol=1e-5)
