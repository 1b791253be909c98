"""Every config the project ships or uses loads under the value rules, and the rules' allowed
sets are the ones the consuming code accepts."""
import glob
import os
import re
import shlex
import types

import pytest
import yaml

import pathreasoner_jax.config as config_pkg
from pathreasoner_jax.config import RULES, load_config
from pathreasoner_jax.config import checks
from pathreasoner_jax.config.loader import field_keys
from pathreasoner_jax.config.rulekit import check_keys_exist
from pathreasoner_jax.core import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "tests", "*.yaml")))
MESH_PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "mesh", "*.yaml")))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
DEMO_LIKE = os.path.join(ROOT, "tests", "demo_like.yaml")
Q7B = os.path.join(ROOT, "configs", "qwen2_5_7b.yaml")


def test_config_error_is_the_core_class():
    assert config_pkg.ConfigError is errors.ConfigError


def test_every_rule_names_a_config_field():
    assert check_keys_exist(RULES, field_keys()) is None


def test_no_module_of_the_package_exceeds_400_lines():
    for path in glob.glob(os.path.join(os.path.dirname(config_pkg.__file__), "*.py")):
        with open(path) as f:
            assert len(f.readlines()) <= 400, path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_config_loads(path):
    load_config(path)


def _use_lines(preset: str) -> list[list[str]]:
    """The `pathreasoner sft --config ...` command lines in a preset's header comment."""
    with open(preset) as f:
        text = f.read()
    return [shlex.split(m) for m in re.findall(r"^#.*?pathreasoner \w+ (--config .*)$", text, re.M)]


@pytest.mark.parametrize("preset", MESH_PRESETS, ids=os.path.basename)
def test_mesh_preset_with_its_documented_command_line(preset):
    lines = _use_lines(preset)
    assert lines, f"{preset} documents no command line"
    for args in lines:
        assert args[0] == "--config"
        cfg = load_config(os.path.join(ROOT, args[1]), args[2:])
        with open(preset) as f:
            mesh = yaml.safe_load(f)["mesh"]
        assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (mesh["data"], mesh["fsdp"], mesh["tensor"])


@pytest.mark.parametrize("preset", MESH_PRESETS, ids=os.path.basename)
def test_mesh_preset_as_a_run_config_on_its_model(preset, tmp_path):
    """The other documented use (docs/scaling.md): `base: MODEL.yaml` plus the mesh section,
    with the batch size the preset's command line sets."""
    (args,) = _use_lines(preset)[:1]
    batch = [a.split("=", 1)[1] for a in args if a.startswith("sft.batch_size=")]
    with open(preset) as f:
        mesh = [line for line in f if not line.startswith("#")]
    run = tmp_path / "run.yaml"
    run.write_text(f"base: {os.path.join(ROOT, args[1])}\n" + "".join(mesh)
                   + (f"sft: {{batch_size: {batch[0]}}}\n" if batch else ""))
    load_config(str(run))


def test_docs_scaling_examples(tmp_path):
    run = tmp_path / "my_7b_h100x8.yaml"
    run.write_text(f"base: {Q7B}\nmesh: {{data: 1, fsdp: 8, tensor: 1}}\nsft: {{batch_size: 16}}\n")
    load_config(str(run))
    load_config(Q7B, ["mesh.fsdp=8"])                                                  # 8×H100 node
    load_config(Q7B, ["mesh.data=4", "mesh.fsdp=8", "sft.batch_size=64", "run.root=/shared/runs"])  # SLURM
    load_config(Q7B, ["mesh.fsdp=16", "mesh.tensor=4", "sft.batch_size=32", "run.root=/mnt/gcs/runs"])  # v5e-64
    load_config(Q7B, ["mesh.data=1", "mesh.fsdp=16", "mesh.tensor=4", "sft.batch_size=32"])  # launch/tpu_pod.sh
    q15 = os.path.join(ROOT, "configs", "qwen2_5_1_5b.yaml")                                # benchmarks
    load_config(q15, ["bench.slide_tokens=4096", "bench.seq_len=4608", "bench.batch=2"])
    load_config(q15, ["bench.slide_tokens=4096", "bench.seq_len=4160", "bench.batch=4", "bench.group_size=8",
                      "bench.new_tokens=256"])


# the override sets the tests and launchers pass (see the file named with each)
DEMO_TEST = ["run.root=/tmp/r", "data.demo_num_slides=12", "data.augment_per_sample=1", "sft.epochs=2",
             "grpo.steps=2", "grpo.max_new_tokens=24", "eval.max_new_tokens=24", "eval.reward_samples=2",
             "data.splits=[0.5,0.25,0.25]"]                                             # tests/test_demo.py
USED = [
    (DEMO, DEMO_TEST),
    (DEMO, DEMO_TEST + ["run.progress=false"]),                                        # launch/demo.sh stages
    (DEMO, ["sft.pseudo_bag=true", "sft.epochs=4", "run.progress=false"] + DEMO_TEST),
    (DEMO, ["model.llm.vocab_size=128", "model.llm.hidden_size=32", "model.llm.intermediate_size=64",
            "model.llm.num_heads=2", "model.llm.num_kv_heads=1", "model.slide.width=32", "model.slide.ffn_dim=32",
            "model.slide.num_heads=2", "model.slide.dropout=0.0", "model.slide.drop_path=0.0",
            "bench.slide_tokens=16", "bench.seq_len=40", "bench.batch=8", "bench.warmup=1",
            "bench.repeats=2"]),                                                        # tests/test_bench_cli.py
    (DEMO, ["bench.rewards_batch_sizes=[8]", "bench.repeats=2"]),
    (None, ["data.slides_dir=/s", "data.reports_path=/r.json", "data.prep_dir=/p", "run.progress=false",
            "data.splits=[0.34, 0.33, 0.33]", "data.augment_per_sample=2"]),           # tests/test_prep_shards.py
    (None, ["data.features_dir=/f", "data.reports_path=/r.json", "data.prep_dir=/p", "run.progress=false"]),
    (DEMO_LIKE, ["run.root=/tmp/r", "data.prep_dir=/p", "sft.max_steps=60", "sft.keep_last=100"]),  # test_sft_resume
    (DEMO_LIKE, ["run.root=/tmp/r", "data.prep_dir=/p", "grpo.steps=3"]),
    (DEMO_LIKE, ["run.root=/tmp/r", "data.prep_dir=/p"]),                              # tests/test_cli_errors.py
    (DEMO, ["model.llm.hf_path=/models/qwen"]),                                        # hf-import adds hf_path
]


@pytest.mark.parametrize("path,overrides", USED)
def test_override_sets_in_use_load(path, overrides):
    load_config(path, overrides)


# ---------------------------------------------------------------- the allowed sets are the consumers'
def test_enumerations_equal_the_consumers_constants():
    from data_prep.splits import SPLIT_NAMES
    from pathreasoner_jax import memory, records
    from pathreasoner_jax.grpo.advantages import ADV_SCALES
    from pathreasoner_jax.grpo.losses import AGGREGATIONS, KL_MODES
    from pathreasoner_jax.models.vlm import DTYPES
    from pathreasoner_jax.slides.encoders import ENCODERS
    from pathreasoner_jax.train.params import MODULES
    assert set(checks.DTYPES) == set(DTYPES) == set(memory._BYTES)
    assert set(checks.ENCODERS) == set(ENCODERS)
    assert set(checks.LOSS_AGGS) == set(AGGREGATIONS)
    assert set(checks.KL_MODES) == set(KL_MODES)
    assert set(checks.ADV_SCALES) == set(ADV_SCALES)
    assert set(checks.FREEZABLE) == set(MODULES)
    assert set(checks.SPLITS) == set(records.SPLITS) == set(SPLIT_NAMES)
    from pathreasoner_jax.clip.build import _DTYPES as CLIP_DTYPES
    from pathreasoner_jax.clip.loss import LOSSES
    from pathreasoner_jax.clip.model import PRESETS
    assert set(checks.CLIP_PRESETS) == set(PRESETS) and set(checks.CLIP_LOSSES) == set(LOSSES)
    assert set(checks.DTYPES) == set(CLIP_DTYPES)
    from pathreasoner_jax.vl.convert import DTYPES as VL_DTYPES
    from pathreasoner_jax.vl.stages import PRETRAIN_MODES
    assert set(checks.VL_PRETRAIN_MODES) == set(PRETRAIN_MODES) and set(checks.DTYPES) == set(VL_DTYPES)


def test_enumerations_without_a_constant_match_their_consumers():
    from data_prep.kg import load_kg
    from data_prep.writers import WriterError, build_writer
    from pathreasoner_jax.core.errors import UserError
    from pathreasoner_jax.data.encode import ExampleEncoder
    from pathreasoner_jax.models.attention import _pick
    for mode in checks.TRAJECTORY_MASK_MODES:
        ExampleEncoder(None, 0, 4, mode)
    with pytest.raises(ValueError):
        ExampleEncoder(None, 0, 4, "sometimes")
    with pytest.raises(UserError, match="unknown kg_format"):
        load_kg("kg.csv", "neo4j")
    assert build_writer(types.SimpleNamespace(reasoning_writer="template")) is not None
    with pytest.raises(WriterError, match="unknown"):
        build_writer(types.SimpleNamespace(reasoning_writer="claude"))
    assert set(checks.REASONING_WRITERS) == {"template", "openai"}
    assert _pick("xla", None) == "xla" and _pick("cudnn", None) == "cudnn"
    assert set(checks.ATTENTION_IMPLS) - {"xla", "cudnn"} == {"auto"}


def test_semantic_rewards_match_the_reward_function():
    from pathreasoner_jax.config import RewardsConfig
    from pathreasoner_jax.core.errors import UserError
    from pathreasoner_jax.grpo.reward_fn import make_semantic_scorer

    def rt(semantic):
        return types.SimpleNamespace(cfg=types.SimpleNamespace(rewards=RewardsConfig(semantic=semantic)),
                                     layout=types.SimpleNamespace(judge_cache=None))
    assert make_semantic_scorer(rt("rouge"), None) is None
    with pytest.raises(UserError, match="needs the frozen reference"):  # known, but needs the model
        make_semantic_scorer(rt("self"), None)
    with pytest.raises(ValueError, match="judge_url"):                  # known, but needs the endpoint
        make_semantic_scorer(rt("judge"), None)
    with pytest.raises(UserError, match="choose"):
        make_semantic_scorer(rt("bleu"), None)
    assert set(checks.SEMANTIC_REWARDS) == {"rouge", "judge", "self"}


def test_lora_targets_are_the_decoder_projections():
    import jax
    from flax import nnx
    from tiny_vlm import IMAGE_ID, tiny_config
    from pathreasoner_jax.models.factory import abstract_model
    cfg = tiny_config(lora=True)
    cfg.lora.targets = list(checks.LORA_TARGETS)
    state = nnx.state(abstract_model(cfg, IMAGE_ID).llm)
    paths = {".".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    for target in checks.LORA_TARGETS:
        assert any(f".{target}.lora_a" in p for p in paths), target

