"""hf-import → (a changed checkpoint) → hf-export gives a complete, self-describing model:
transformers loads the LLM and tokenizer (tags, chat template, generation ids), the files
have normal modes, the whole VLM loads in PyTorch with our logits; a mismatching config and
a wrong folder are one-line errors."""
import json
import os
import stat

import numpy as np
import pytest

import jax.numpy as jnp
from flax import nnx

torch = pytest.importorskip("torch")

from hf_fixtures import TINY_TEMPLATE_MARK, make_hf_qwen2, make_tiny_tokenizer, perturb_params  # noqa: E402
from pathreasoner_jax.checkpoint import Checkpointer, restore_params  # noqa: E402
from pathreasoner_jax.cli import main  # noqa: E402
from pathreasoner_jax.config import load_config  # noqa: E402
from pathreasoner_jax.runtime import setup  # noqa: E402
from pathreasoner_jax.tokenizer import SPECIAL_TOKENS  # noqa: E402

CONFIG = """
run: {{name: t, root: {root}}}
model:
  compute_dtype: float32
  llm: {{hf_path: {hf}}}
  slide: {{feature_dim: 16, width: 32, ffn_dim: 64, num_heads: 4, segment_lengths: [8, 16], dilations: [1, 2],
          dropout: 0.0, drop_path: 0.0}}
  lora: {{enabled: true, rank: 4, alpha: 8.0, dropout: 0.0}}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    hf = str(tmp / "hf")
    make_hf_qwen2(hf, tied=False)
    make_tiny_tokenizer(hf)
    cfg_path = str(tmp / "cfg.yaml")
    with open(cfg_path, "w") as f:
        f.write(CONFIG.format(root=tmp / "runs", hf=hf))
    assert main(["hf-import", "--config", cfg_path, "--hf-dir", hf, "--out", str(tmp / "ck0")]) == 0
    rt = setup(load_config(cfg_path))
    model = rt.build_model()
    meta = restore_params(str(tmp / "ck0"), model)
    perturb_params(model, seed=0, scale=0.05)  # "trained": every tensor (LoRA B too) differs from the import
    ck = Checkpointer(str(tmp / "ck1"), keep_last=1, async_save=False)
    ck.save(1, model, meta=meta)
    ck.close()
    old = os.umask(0o022)
    try:
        assert main(["hf-export", "--config", cfg_path, "--checkpoint", str(tmp / "ck1"),
                     "--out", str(tmp / "out")]) == 0
    finally:
        os.umask(old)
    return {"tmp": tmp, "hf": hf, "cfg": cfg_path, "rt": rt, "model": model, "out": str(tmp / "out"), "meta": meta}


def test_import_records_the_hf_and_model_config(exported):
    meta = exported["meta"]
    with open(os.path.join(exported["hf"], "config.json")) as f:
        assert meta["hf_config"] == json.load(f)
    assert meta["config"] == os.path.abspath(exported["cfg"])
    assert meta["model_fields"]["model.slide.width"] == 32 and meta["model_fields"]["model.lora.rank"] == 4


def test_transformers_loads_llm_tokenizer_and_generation_config(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    out, ids = exported["out"], exported["rt"].ids
    tok = AutoTokenizer.from_pretrained(out)
    for t in SPECIAL_TOKENS:  # the 7 added tags too: single tokens with the training ids
        assert tok.tokenize(t) == [t]
        assert tok.convert_tokens_to_ids(t) == exported["rt"].tokenizer.convert_tokens_to_ids(t)
    assert tok.chat_template.endswith(TINY_TEMPLATE_MARK)  # the source's own template, copied
    text = tok.apply_chat_template([{"role": "user", "content": "<image> what is it?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\n<image> what is it?<|im_end|>\n<|im_start|>assistant\n"
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id[0] == ids.eos and gen.pad_token_id == ids.pad and gen.bos_token_id is not None
    llm = AutoModelForCausalLM.from_pretrained(out)
    assert llm.config.eos_token_id == ids.eos and llm.config.pad_token_id == ids.pad
    assert llm.generation_config.eos_token_id[0] == ids.eos


def test_export_layout_and_file_modes(exported):
    out = exported["out"]
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "slide_encoder"} <= names
    assert sorted(os.listdir(os.path.join(out, "slide_encoder"))) == ["config.json", "model.safetensors"]
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith((".tmp-out", ".old-out"))]
    for d, dirs, files in os.walk(out):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d
        for n in files:
            assert stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) == 0o644, n
    with open(os.path.join(out, "slide_encoder", "config.json")) as f:
        sc = json.load(f)
    assert sc["slide_encoder"]["width"] == 32 and sc["projector"] == {"in_dim": 32, "out_dim": 64}
    assert sc["image_token_id"] == exported["rt"].ids.image and sc["format_version"] == 1


@nnx.jit
def _our_logits(model, ids, tv, f, pv):
    hidden, valid = model(ids, tv, f, pv, model.ctx())
    return model.llm.logits(hidden), valid


def test_exported_vlm_in_pytorch_matches_our_forward(exported):
    from pathreasoner_jax.hf.torch_vlm import load_exported_vlm
    vlm, tok = load_exported_vlm(exported["out"], dtype=torch.float32)
    assert not vlm.training and tok.convert_tokens_to_ids("<image>") == vlm.image_token_id
    rng = np.random.default_rng(1)
    ids = rng.integers(10, 280, size=(3, 24)).astype(np.int32)
    ids[:, 2:12] = vlm.image_token_id
    tv = np.ones((3, 24), bool)
    tv[1, -6:] = False  # right padding
    pv = np.ones((3, 10), bool)
    pv[0, 6:] = False  # a short slide
    pv[2, ::3] = False  # holes
    feats = rng.standard_normal((3, 10, 16)).astype(np.float32)
    ours, valid = _our_logits(exported["model"], *map(jnp.asarray, (ids, tv, feats, pv)))
    with torch.no_grad():
        theirs, tvalid = vlm(torch.from_numpy(ids).long(), torch.from_numpy(tv), torch.from_numpy(feats),
                             torch.from_numpy(pv))
    valid = np.asarray(valid)
    np.testing.assert_array_equal(tvalid.numpy(), valid)
    np.testing.assert_allclose(theirs.numpy()[valid], np.asarray(ours)[valid], atol=1e-4, rtol=0)


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_restoring_with_another_config_names_the_fields(exported, capsys):
    tmp = exported["tmp"]
    err = _one_line_error(capsys, ["hf-export", "--config", exported["cfg"], "model.lora.rank=8",
                                   "--checkpoint", str(tmp / "ck0"), "--out", str(tmp / "never")])
    assert "model.lora.rank: 4 in the checkpoint, 8 here" in err and "model.slide" not in err
    assert not os.path.exists(tmp / "never")


def test_import_without_config_records_defaults_and_is_caught(exported, capsys):
    tmp = exported["tmp"]
    assert main(["hf-import", "--hf-dir", exported["hf"], "--out", str(tmp / "ck_defaults")]) == 0
    assert "defaults" in capsys.readouterr().out
    err = _one_line_error(capsys, ["hf-export", "--config", exported["cfg"], "--checkpoint",
                                   str(tmp / "ck_defaults"), "--out", str(tmp / "never")])
    assert "model.slide.width: 512 in the checkpoint, 32 here" in err and "model.lora.rank" in err


def test_import_of_a_wrong_folder_is_one_line(exported, capsys, tmp_path):
    out = str(tmp_path / "ck")
    err = _one_line_error(capsys, ["hf-import", "--hf-dir", str(tmp_path), "--out", out])
    assert str(tmp_path) in err and "config.json" in err
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "llama"}, f)
    assert "model_type 'llama' is not qwen2" in _one_line_error(capsys, ["hf-import", "--hf-dir", str(tmp_path),
                                                                         "--out", out])
    with open(os.path.join(exported["hf"], "config.json")) as f:
        cfg = f.read()
    with open(tmp_path / "config.json", "w") as f:
        f.write(cfg)
    err = _one_line_error(capsys, ["hf-import", "--hf-dir", str(tmp_path), "--out", out])
    assert str(tmp_path) in err and "model.safetensors" in err
    assert not os.path.exists(out)


def test_export_refuses_to_replace_a_folder_that_is_no_export(tmp_path):
    from pathreasoner_jax.core.errors import UserError
    from pathreasoner_jax.hf.export import staged_dir
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not an earlier export"):
        with staged_dir(str(tmp_path / "data")):
            pass
    assert (tmp_path / "data" / "keep.txt").exists()


def test_every_hf_option_has_help():
    from pathreasoner_jax.cli import build_parser
    subs = build_parser()._subparsers._group_actions[0].choices
    for name in ("hf-import", "hf-export"):
        bare = [a.dest for a in subs[name]._actions if a.dest != "help" and not a.help]
        assert bare == [], name
