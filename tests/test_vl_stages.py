"""Patho-R1's stages on images: the encoder's turns and loss weights, what each mode trains,
GRPO learning an image-dependent option, and the whole pipeline on a tiny demo."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import jax
import jax.numpy as jnp
from flax import nnx

from pathreasoner_jax.config import GRPOConfig, VLConfig
from pathreasoner_jax.models.qwen2 import Qwen2Dims
from pathreasoner_jax.models.qwen_vision import VisionDims
from pathreasoner_jax.models.qwen_vl import QwenVL
from pathreasoner_jax.sft.loss import sft_loss
from pathreasoner_jax.sft.step import SFTStep
from pathreasoner_jax.sharding import make_mesh
from pathreasoner_jax.train.params import init_opt_state, make_optimizer
from pathreasoner_jax.vl.preprocess import VisionGeometry, pack_images
from pathreasoner_jax.vl.records import VLStore
from pathreasoner_jax.vl.stages import PRETRAIN_MODES, trainable_filter

VOCAB, IMAGE, A, B, EOS = 64, 3, 40, 41, 1
GEOM = VisionGeometry(window_size=56)


def tiny_vl(seed=0, lora_rank=0):
    d = Qwen2Dims(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  lora_rank=lora_rank, lora_alpha=2.0 * lora_rank, lora_targets=("q_proj", "v_proj") if lora_rank else (),
                  mrope_section=(1, 1, 2))
    v = VisionDims(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                   fullatt_block_indexes=(1,), window_size=56)
    return QwenVL(d, v, nnx.Rngs(seed), IMAGE)


def image_rows(classes, rng):
    """One 4×4-patch image per row (4 merged tokens): class 0 dark, class 1 bright."""
    rows = []
    for c in classes:
        px = rng.normal(-1.0 if c == 0 else 1.0, 0.3, (16, GEOM.patch_dim)).astype(np.float32)
        rows.append([(px, np.asarray([1, 4, 4]))])
    return pack_images(rows, 16, GEOM)


def prompt_batch(classes, rng):
    """ids: [text, 4 image tokens, text] (a left-padded row when classes has ≥ 2 entries)."""
    n, t = len(classes), 10
    ids = rng.integers(10, 30, size=(n, t)).astype(np.int32)
    ids[:, 4:8] = IMAGE
    valid = np.ones((n, t), bool)
    valid[-1, :2] = False
    packed = image_rows(classes, rng)
    tv = packed.pop("token_valid")
    return {"ids": jnp.asarray(ids), "text_valid": jnp.asarray(valid),
            "features": {k: jnp.asarray(x) for k, x in packed.items()}, "patch_valid": jnp.asarray(tv)}


def _paths(state):
    return {tuple(str(p) for p in path): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


# vision+projector sits between the other two (suite budget: slow)
@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.slow) if m == "vision+projector" else m
                                  for m in PRETRAIN_MODES])
def test_pretrain_modes_train_only_their_modules(mode):
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model = tiny_vl()
    v = VLConfig(pretrain_mode=mode)
    filt = trainable_filter("vl_pretrain", v)
    graphdef, trainable, frozen = nnx.split(model, filt, ...)
    before = _paths(nnx.state(model))
    rng = np.random.default_rng(0)
    b = prompt_batch([0, 1, 0, 1], rng)
    b["targets"] = jnp.roll(b["ids"], -1, axis=1)
    b["loss_weight"] = jnp.asarray(np.r_[np.zeros(7), np.ones(3)][None].repeat(4, 0).astype(np.float32))
    tx, sched = make_optimizer(1e-2, 2, 0.0, 0.0, 0.0)
    step = SFTStep(graphdef, tx, sched, 1, mesh, filt, sft_loss)
    opt = init_opt_state(tx, trainable, mesh)
    new_t, _, m = jax.jit(step.step)(trainable, frozen, opt, b, jax.random.key(0), jnp.int32(0))
    assert float(m["skipped"]) == 0.0
    after = _paths(nnx.state(nnx.merge(graphdef, new_t, frozen)))
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    expect = {"projector": lambda p: p[:2] == ("visual", "merger"),
              "vision+projector": lambda p: p[0] == "visual",
              "full": lambda p: True}[mode]
    assert changed and all(expect(p) for p in changed), sorted(changed)[:5]
    # every parameter the mode trains moved (gradients reach all of them)
    assert {p for p in before if expect(p) and p[-1] in ("kernel", "embed_tokens")} <= changed


def test_sft_filter_with_lora_trains_adapters_and_merger_only():
    model = tiny_vl(lora_rank=2)
    filt = trainable_filter("vl_sft", VLConfig(lora_rank=2, sft_freeze_vision=True))
    _, trainable, _ = nnx.split(model, filt, ...)
    paths = {tuple(str(p) for p in path) for path, _ in nnx.to_flat_state(trainable)}
    assert paths and all(p[:2] == ("visual", "merger") or p[-1] in ("lora_a", "lora_b") for p in paths)
    assert any(p[-1] == "lora_a" for p in paths) and any(p[:2] == ("visual", "merger") for p in paths)


def test_grpo_on_images_learns_the_option_the_image_decides():
    """Reward 1 when the first completion token is A for a dark image and B for a bright one:
    only the image tells them apart, so the policy can pass chance only by reading it."""
    from pathreasoner_jax.generate import SamplingParams, sample
    from pathreasoner_jax.grpo.iteration import GRPOState, grpo_iteration
    from pathreasoner_jax.grpo.step import make_grpo_step
    from pathreasoner_jax.tokenizer import SpecialIds
    ids = SpecialIds(pad=0, eos=EOS, im_start=2, im_end=EOS, image=IMAGE, observe_open=4, observe_close=5,
                     think_open=6, think_close=7, answer_open=8, answer_close=9)
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model = tiny_vl(seed=1)
    cfg = GRPOConfig(group_size=8, max_new_tokens=2, temperature=1.0, lr=5e-3, kl_mode="none", inner_epochs=1,
                     loss_agg="token-mean", prompts_per_step=8)
    filt = trainable_filter("vl_grpo", VLConfig(sft_freeze_vision=False))
    step, t, f, o, ref = make_grpo_step(model, cfg, filt, mesh, True)
    state = GRPOState(t, f, o, ref)
    eval_classes = [0, 1] * 8
    eval_b = prompt_batch(eval_classes, np.random.default_rng(99))

    def accuracy():
        m = nnx.merge(step.graphdef, state.trainable, state.frozen)
        out = sample(m, eval_b["ids"], eval_b["text_valid"], eval_b["features"], eval_b["patch_valid"],
                     jax.random.key(0), params=SamplingParams(max_new_tokens=1, greedy=True), eos_id=EOS, pad_id=0)
        want = np.where(np.asarray(eval_classes) == 0, A, B)
        return float(np.mean(np.asarray(out["tokens"])[:, 0] == want))

    def reward_fn(rollout, prompts, g):
        want = jnp.repeat(jnp.where(prompts["cls"] == 0, A, B), g)
        hit = (rollout["tokens"][:, 0] == want).astype(jnp.float32)
        return {"total": hit}

    start = accuracy()
    for k in range(40):
        def next_prompts(attempt, k=k):
            rng = np.random.default_rng([k, attempt])
            cls = rng.integers(0, 2, 8)
            # most of the policy's mass on A or B, so groups see both (a reward signal from step 1)
            return {**prompt_batch(cls, rng), "cls": jnp.asarray(cls)}
        state, m = grpo_iteration(step, state, next_prompts, reward_fn, jax.random.key(k), cfg, ids)
    assert accuracy() >= max(0.9, start + 0.3), (start, accuracy())


def test_encoder_turns_weights_and_masking():
    from pathreasoner_jax.tokenizer import load_tokenizer, train_demo_tokenizer
    from pathreasoner_jax.vl.encode import VLEncoder
    from pathreasoner_jax.vl.records import VLRecord
    from pathreasoner_jax.vl.runtime import add_vl_tokens
    import tempfile
    png = io.BytesIO()
    Image.fromarray(np.full((56, 84, 3), 128, np.uint8)).save(png, format="PNG")
    reply = "<observe>Glands are crowded. Nuclei are large.</observe><think>Crowded glands mean cancer.</think>" \
            "<answer>B</answer>"
    conv = VLRecord("conversation", images=[png.getvalue()],
                    conversation=[{"role": "user", "content": "<image>\nWhat is it?"},
                                  {"role": "assistant", "content": reply}])
    cap = VLRecord("caption", images=[png.getvalue()], caption="Crowded glands.")
    with tempfile.TemporaryDirectory() as d:
        tok = add_vl_tokens(load_tokenizer(train_demo_tokenizer([reply, "What is it? Describe this pathology image."],
                                                                os.path.join(d, "t"), 400)))
    enc = VLEncoder(tok, GEOM)
    e = enc.encode(cap)
    # 56×84 px → 4×6 patches → 6 merged tokens between vision_start and vision_end
    assert int(np.sum(e.ids == enc.image_id)) == 6
    start = int(np.flatnonzero(e.ids == enc.start_id)[0])
    assert e.ids[start + 7] == enc.end_id
    weighted = tok.decode(e.ids[e.weight > 0])
    assert weighted == "Crowded glands.<|im_end|>"
    p = enc.encode(conv, prompt_only=True)
    assert tok.decode(p.ids).endswith("<|im_end|>\n<|im_start|>assistant\n") and not p.weight.any()
    assert "<answer>" not in tok.decode(p.ids)
    full = enc.encode(conv)
    assert tok.decode(full.ids[full.weight > 0]) == reply + "<|im_end|>"
    # loss masking: rate 1 zeroes every observe/think sentence, never the answer
    masked = VLEncoder(tok, GEOM, "loss", 1.0).encode(conv, np.random.default_rng(0))
    np.testing.assert_array_equal(masked.ids, full.ids)
    kept = tok.decode(masked.ids[masked.weight > 0])
    assert "<answer>B</answer>" in kept and "Glands" not in kept and "Crowded" not in kept
    dropped = VLEncoder(tok, GEOM, "drop", 1.0).encode(conv, np.random.default_rng(0))
    text = tok.decode(dropped.ids[dropped.weight > 0])
    assert text == "<observe></observe><think></think><answer>B</answer><|im_end|>"


def test_vl_pipeline_end_to_end(tmp_path):
    """vl-data (demo tiles) → vl-init → the three stages (2 steps each) → vl-eval → vl-export,
    which transformers loads; a rerun of a finished stage is a no-op."""
    import types
    from data_prep.demo.corpus import generate_demo_corpus
    from pathreasoner_jax.config import load_config
    from data_prep.vl_data import run_vl_data
    from pathreasoner_jax.vl import cli
    root = tmp_path
    generate_demo_corpus(str(root / "cache" / "corpus-s0-n12"), 12, 0, sizes=(256, 512))
    ov = [f"data.cache_dir={root / 'cache'}", "data.demo_num_slides=12", "data.demo_seed=0",
          f"run.root={root / 'runs'}", "run.progress=false", "clip.demo_tiles_per_slide=2", "clip.demo_tile_size=56",
          "clip.splits=[0.4,0.3,0.3]", "vl.max_pixels=3136", "vl.max_patches=16", "vl.max_len=160",
          "vl.init_vocab=400", "vl.init_hidden=32", "vl.init_heads=2", "vl.init_kv_heads=1",
          "vl.init_vision_hidden=16", "vl.init_vision_heads=2", "vl.init_vision_depth=1", "vl.batch_size=8",
          "vl.pretrain_steps=2", "vl.sft_steps=2", "vl.grpo_steps=2", "vl.grpo_prompts=2", "vl.group_size=4",
          "vl.max_new_tokens=8", "vl.eval_batch_size=8", "vl.eval_new_tokens=8", "model.logits_chunk=0",
          "grpo.kl_mode=loss", "grpo.kl_beta=0.01", "mesh.fsdp=2"]
    cfg_yaml = root / "vl.yaml"
    cfg_yaml.write_text("{}\n")
    args = types.SimpleNamespace(config=str(cfg_yaml), overrides=ov, force=False, stage="all", checkpoint="", tag="")
    assert run_vl_data(args) == 0 and cli.run_vl_init(args) == 0 and cli.run_vl_train(args) == 0
    cfg = load_config(str(cfg_yaml), ov)
    from pathreasoner_jax.run_layout import RunLayout
    layout = RunLayout(cfg)
    for stage in ("vl_pretrain", "vl_sft", "vl_grpo"):
        assert layout.stage_done(stage)
    assert layout.vl_init("vl_grpo") == layout.checkpoint("vl_sft")
    assert cli.run_vl_train(args) == 0  # finished stages: no-ops
    args.stage = "grpo"
    assert cli.run_vl_eval(args) == 0
    with open(os.path.join(layout.vl_eval_dir, "grpo.json")) as f:
        res = json.load(f)
    assert res["true_images"]["n"] == len(VLStore(os.path.join(layout.vl_data_dir, "mcq")).split("test"))
    args.out = str(root / "export")
    args.dtype = "float32"
    assert cli.run_vl_export(args) == 0
    from benchmarks.torch_baseline.torchvision_cpu import ensure_torchvision_importable
    ensure_torchvision_importable()
    from transformers import Qwen2_5_VLForConditionalGeneration
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.out)
    assert hf.config.image_token_id == cfg_image_id(args.out)


def cfg_image_id(hf_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(hf_dir).convert_tokens_to_ids("<|image_pad|>")


def test_grpo_config_takes_the_vl_overrides():
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.vl.stages import grpo_config
    cfg = load_config(None, ["vl.group_size=4", "vl.max_new_tokens=9", "grpo.clip_eps_high=0.28"])
    g = grpo_config(cfg)
    assert (g.group_size, g.max_new_tokens, g.clip_eps_high) == (4, 9, 0.28)
    assert cfg.grpo.group_size != 4  # the slide GRPO's own setting is left alone
