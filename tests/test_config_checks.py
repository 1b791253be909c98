"""Value rules at load time: each kind of rule rejects a bad value with the key, the source
that set it (the YAML file, `<command line>` or `<default>`), the value and what is allowed."""
import os

import pytest

from pathreasoner_jax.config import ConfigError, config_sources, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")


def _error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return str(e.value)


def _yaml(tmp_path, text: str, name: str = "run.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_issue_example_group_size_in_a_file(tmp_path):
    p = _yaml(tmp_path, "grpo:\n  group_size: 1\n")
    msg = _error(p)
    assert msg.startswith(f"{p}: key 'grpo.group_size'")
    assert ">= 2" in msg and msg.endswith("got 1")


# (overrides, key the message must name, the bad value as written there, a word of what is allowed)
COMMAND_LINE_CASES = [
    # enumerations
    (["model.compute_dtype=fp8"], "model.compute_dtype", "'fp8'", "bfloat16"),
    (["model.param_dtype=float64"], "model.param_dtype", "'float64'", "float32"),
    (["model.attention_impl=flash"], "model.attention_impl", "'flash'", "cudnn"),
    (["data.kg_format=owl"], "data.kg_format", "'owl'", "pathoml"),
    (["data.encoder=uni"], "data.encoder", "'uni'", "conch_v1"),
    (["data.reasoning_writer=claude"], "data.reasoning_writer", "'claude'", "openai"),
    (["sft.trajectory_mask_mode=mask"], "sft.trajectory_mask_mode", "'mask'", "drop"),
    (["grpo.loss_agg=sum"], "grpo.loss_agg", "'sum'", "token-mean"),
    (["grpo.kl_mode=k3"], "grpo.kl_mode", "'k3'", "reward"),
    (["grpo.adv_scale=std"], "grpo.adv_scale", "'std'", "group"),
    (["rewards.semantic=bleu"], "rewards.semantic", "'bleu'", "rouge"),
    (["eval.split=validation"], "eval.split", "'validation'", "val"),
    # enumerations item by item
    (["sft.freeze=[llm,vision]"], "sft.freeze[1]", "'vision'", "slide_encoder"),
    (["model.lora.targets=[q_proj,qkv_proj]"], "model.lora.targets[1]", "'qkv_proj'", "v_proj"),
    # counts, positives, ranges
    (["sft.lr=0"], "sft.lr", "0.0", "> 0"),
    (["grpo.lr=-1e-6"], "grpo.lr", "-1e-06", "> 0"),
    (["sft.batch_size=0"], "sft.batch_size", "0", ">= 1"),
    (["model.slide.num_layers=0"], "model.slide.num_layers", "0", ">= 1"),
    (["sft.max_steps=-1"], "sft.max_steps", "-1", ">= 0"),
    (["grpo.group_size=1"], "grpo.group_size", "1", ">= 2"),
    (["sft.warmup_ratio=1.5"], "sft.warmup_ratio", "1.5", "[0, 1]"),
    (["sft.pseudo_bag_q=-0.1"], "sft.pseudo_bag_q", "-0.1", "[0, 1]"),
    (["data.fuzzy_threshold=2"], "data.fuzzy_threshold", "2.0", "[0, 1]"),
    (["model.slide.dropout=1"], "model.slide.dropout", "1.0", "[0, 1)"),
    (["grpo.top_p=0"], "grpo.top_p", "0.0", "(0, 1]"),
    (["grpo.temperature=0"], "grpo.temperature", "0.0", "> 0"),
    (["grpo.clip_eps_low=-0.2"], "grpo.clip_eps_low", "-0.2", ">= 0"),
    (["data.target_magnification=0"], "data.target_magnification", "0.0", "> 0"),
    (["rewards.judge_timeout_s=0"], "rewards.judge_timeout_s", "0.0", "> 0"),
    (["data.reasoning_retries=-1"], "data.reasoning_retries", "-1", ">= 0"),
    (["mesh.tensor=0"], "mesh.tensor", "0", "-1"),
    (["mesh.data=-2"], "mesh.data", "-2", "-1"),
    # lists
    (["data.splits=[0.8,0.1]"], "data.splits", "[0.8, 0.1]", "summing to 1"),
    (["data.splits=[1.2,-0.1,-0.1]"], "data.splits", "[1.2, -0.1, -0.1]", "non-negative"),
    (["data.length_buckets=[512,256]"], "data.length_buckets", "[512, 256]", "ascending"),
    (["data.length_buckets=[0,256]"], "data.length_buckets[0]", "0", ">= 1"),
    (["model.slide.segment_lengths=[]", "model.slide.dilations=[]"], "model.slide.segment_lengths", "[]", "empty"),
    (["model.slide.segment_lengths=[16,32]", "model.slide.dilations=[1,0]"], "model.slide.dilations[1]", "0", ">= 1"),
]


@pytest.mark.parametrize("overrides,key,shown,allowed", COMMAND_LINE_CASES, ids=[c[1] for c in COMMAND_LINE_CASES])
def test_bad_value_on_the_command_line(overrides, key, shown, allowed):
    msg = _error(DEMO, overrides)
    assert f"<command line>: key '{key}'" in msg
    assert msg.endswith(f"got {shown}") and allowed in msg


def test_bad_value_in_a_file_names_the_file(tmp_path):
    p = _yaml(tmp_path, "model:\n  slide: {dropout: 1.0}\ndata:\n  encoder: resnet\n")
    msg = _error(p)
    assert f"{p}: key 'model.slide.dropout'" in msg and "got 1.0" in msg
    assert f"{p}: key 'data.encoder'" in msg and "got 'resnet'" in msg  # every problem, not only the first
    assert "\n" not in msg  # the console script prints it as one line


def test_a_key_from_a_base_file_names_the_base(tmp_path):
    base = _yaml(tmp_path, "sft: {lr: 0.1, epochs: 0}\n", "base.yaml")
    child = _yaml(tmp_path, "base: base.yaml\nsft: {lr: -0.1}\n", "child.yaml")
    msg = _error(child)
    assert f"{base}: key 'sft.epochs'" in msg and "got 0" in msg
    assert f"{child}: key 'sft.lr'" in msg and "got -0.1" in msg


def test_a_base_key_overridden_on_the_command_line_is_the_command_lines(tmp_path):
    base = _yaml(tmp_path, "grpo: {group_size: 4}\n", "base.yaml")
    child = _yaml(tmp_path, "base: base.yaml\nrun: {name: x}\n", "child.yaml")
    sources = config_sources(child, ["grpo.group_size=1"])
    assert sources["grpo.group_size"] == "<command line>"
    assert config_sources(child)["grpo.group_size"] == base and config_sources(child)["run.name"] == child
    assert config_sources(child)["grpo.steps"] == "<default>"
    msg = _error(child, ["grpo.group_size=1"])
    assert msg.startswith("<command line>: key 'grpo.group_size'") and msg.endswith("got 1")
    assert base not in msg


# cross-field rules: (config path or None, overrides, key, its source, the other key quoted, bad value shown)
def test_batch_size_divisible_by_grad_accum_names_both_sources():
    msg = _error(None, ["sft.grad_accum=3"])
    assert msg.startswith("<default>: key 'sft.batch_size'") and msg.endswith("got 8")
    assert "sft.grad_accum = 3 (<command line>)" in msg


def test_grpo_micro_batches_must_split_the_rows_evenly_over_the_mesh():
    msg = _error(None, ["grpo.micro_batches=3"])  # 4 prompts × 8 completions = 32 rows
    assert msg.startswith("<command line>: key 'grpo.micro_batches'") and msg.endswith("got 3")
    assert "must divide" in msg
    # 32 rows in 8 micro-batches of 4, over data × fsdp = 8 devices: 4 is not a multiple of 8
    msg = _error(None, ["grpo.micro_batches=8", "mesh.fsdp=8"])
    assert "not a multiple" in msg and msg.endswith("got 8")


def test_head_counts_must_fit(tmp_path):
    p = _yaml(tmp_path, "model:\n  llm: {hidden_size: 130, num_heads: 4, num_kv_heads: 2}\n")
    msg = _error(p)
    assert f"{p}: key 'model.llm.num_heads'" in msg and f"model.llm.hidden_size = 130 ({p})" in msg
    assert msg.endswith("got 4")
    msg = _error(DEMO, ["model.llm.num_kv_heads=3"])
    assert "<command line>: key 'model.llm.num_kv_heads'" in msg and f"model.llm.num_heads = 4 ({DEMO})" in msg
    msg = _error(DEMO, ["model.slide.num_heads=3"])
    assert "<command line>: key 'model.slide.num_heads'" in msg and f"model.slide.width = 128 ({DEMO})" in msg
    msg = _error(DEMO, ["model.llm.head_dim=15"])
    assert "<command line>: key 'model.llm.head_dim'" in msg and "even" in msg and msg.endswith("got 15")


def test_head_counts_are_not_checked_against_sizes_an_hf_directory_replaces():
    cfg = load_config(DEMO, ["model.llm.hf_path=/models/qwen", "model.llm.num_heads=3"])
    assert cfg.model.llm.num_heads == 3


def test_segment_lengths_and_dilations_pair_up():
    msg = _error(DEMO, ["model.slide.dilations=[1,2]"])
    assert "<command line>: key 'model.slide.dilations'" in msg and msg.endswith("got [1, 2]")
    assert "model.slide.segment_lengths = [1024, 2048, 4096, 8192, 16384] (<default>)" in msg


def test_at_most_one_mesh_axis_is_minus_one():
    msg = _error(DEMO, ["mesh.tensor=-1"])
    assert "<command line>: key 'mesh.tensor'" in msg and f"mesh.fsdp = -1 ({DEMO})" in msg
    assert msg.endswith("got -1")


def test_sft_batch_must_split_over_a_fixed_mesh():
    msg = _error(DEMO, ["mesh.data=2", "mesh.fsdp=3"])
    assert f"{DEMO}: key 'sft.batch_size'" in msg and "got 8" in msg
    assert "mesh.data = 2 (<command line>)" in msg and "mesh.fsdp = 3 (<command line>)" in msg
    load_config(DEMO, ["mesh.data=2", "mesh.fsdp=3", "sft.batch_size=12", "grpo.prompts_per_step=3"])
    load_config(DEMO, ["mesh.data=2", "mesh.fsdp=-1", "sft.batch_size=7"])  # -1: the device count decides


def test_grpo_rows_must_split_over_a_fixed_mesh():
    # 3 prompts × 8 completions = 24 rows do not split over 16 devices; 4 × 8 = 32 do
    msg = _error(DEMO, ["mesh.fsdp=16", "sft.batch_size=16", "grpo.prompts_per_step=3"])
    assert "<command line>: key 'grpo.prompts_per_step'" in msg and msg.endswith("got 3")
    assert f"grpo.group_size = 8 ({DEMO})" in msg and "mesh.fsdp = 16 (<command line>)" in msg
    load_config(DEMO, ["mesh.fsdp=16", "sft.batch_size=16"])


def test_defaults_are_not_held_against_a_mesh_preset():
    """A mesh preset is a mesh section loaded alone (tests/test_bench_memory.py does): the
    default batch sizes are not checked against it, batch sizes the config sets are."""
    preset = os.path.join(ROOT, "configs", "mesh", "tpu_v5e_64.yaml")
    assert load_config(preset).mesh.fsdp == 16
    msg = _error(preset, ["sft.batch_size=8"])
    assert "<command line>: key 'sft.batch_size'" in msg and f"mesh.fsdp = 16 ({preset})" in msg


def test_overlong_buffer_and_process_id_relations():
    msg = _error(DEMO, ["grpo.overlong_buffer=200"])
    assert "<command line>: key 'grpo.overlong_buffer'" in msg and f"grpo.max_new_tokens = 160 ({DEMO})" in msg
    msg = _error(DEMO, ["mesh.num_processes=2", "mesh.process_id=2"])
    assert "<command line>: key 'mesh.process_id'" in msg and msg.endswith("got 2")


def test_a_relation_does_not_repeat_a_problem_already_reported():
    msg = _error(DEMO, ["sft.grad_accum=0"])  # no division by zero, one problem
    assert msg.startswith("<command line>: key 'sft.grad_accum'") and ">= 1" in msg and msg.endswith("got 0")
    assert "; " not in msg and "sft.batch_size" not in msg
