"""Config tree: YAML presets load, overrides apply, bad keys and types name key and file."""
import os

import pytest

from pathreasoner_jax.config import ConfigError, load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("name", ["demo", "qwen2_5_7b", "qwen2_5_1_5b", "qwen2_5_0_5b"])
def test_presets_load(name):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    assert cfg.run.name == name


def test_base_and_overrides():
    cfg = load_config(os.path.join(CONFIGS, "qwen2_5_1_5b.yaml"), ["sft.lr=1e-4", "model.llm.num_layers=3",
                                                                   "run.name=007", "model.slide.dilations=[1,2]",
                                                                   "model.slide.segment_lengths=[64,128]"])
    assert cfg.model.llm.hidden_size == 1536            # from the file
    assert cfg.model.lora.rank == 64                     # from its base
    assert cfg.sft.lr == 1e-4 and cfg.model.llm.num_layers == 3
    assert cfg.run.name == "007"                         # a string field stays a string
    assert cfg.model.slide.dilations == [1, 2] and cfg.model.slide.segment_lengths == [64, 128]


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("sft:\n  lr: 0.1\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "sft.learning_rate" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_in_file_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  llm:\n    num_layers: two\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "model.llm.num_layers" in str(e.value) and str(p) in str(e.value) and "int" in str(e.value)


def test_bad_override_names_key():
    with pytest.raises(ConfigError, match="<command line>: unknown key 'grpo.nope'"):
        load_config(None, ["grpo.nope=1"])
    with pytest.raises(ConfigError, match="grpo.group_size"):
        load_config(None, ["grpo.group_size=many"])
