"""The config: one dataclass tree, loaded from YAML with `key=value` overrides, every value checked.

YAML files mirror the tree (sections `model`, `data`, `mesh`, `sft`, `grpo`, `rewards`,
`eval`, `run`, `bench`); overrides use dotted keys: `model.llm.num_layers=4 sft.lr=1e-4`.
A file may name a base with `base: other.yaml` (relative to itself); the file's keys
override the base's. `load_config` raises `ConfigError` before any work for an unknown
key, a value of the wrong type, or a value a rule forbids (an unknown enumeration value,
a number out of range, keys that do not fit together); the message names the dotted key,
the source that set it (the YAML file, `<command line>` or `<default>`), the bad value
and what is allowed.

- `schema.py`: the dataclasses and their defaults;
- `loader.py`: YAML with `base:`, overrides, type checks, the source of every key;
- `checks.py`: the value rules, one flat table (`RULES`), built from `rulekit.py`.
"""
from __future__ import annotations

from typing import Optional

from pathreasoner_jax.config.checks import RULES, problems, validate
from pathreasoner_jax.config.loader import COMMAND_LINE, DEFAULT, load_unchecked, parse_override
from pathreasoner_jax.config.schema import (BenchConfig, Config, DataConfig, EvalConfig, GRPOConfig, LLMConfig,
                                            LoRAConfig, MeshConfig, ModelConfig, RewardsConfig, RunConfig,
                                            SFTConfig, SlideEncoderConfig, VLConfig)
from pathreasoner_jax.core.errors import ConfigError


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """The config of `path` (and its bases) with `key=value` overrides, every value checked."""
    cfg, sources = load_unchecked(path, overrides)
    validate(cfg, sources)
    return cfg


def config_sources(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> dict[str, str]:
    """Dotted leaf key → the YAML file, `<command line>` or `<default>` that set it."""
    return load_unchecked(path, overrides)[1]


__all__ = ["BenchConfig", "COMMAND_LINE", "Config", "ConfigError", "DEFAULT", "DataConfig", "EvalConfig",
           "GRPOConfig", "LLMConfig", "LoRAConfig", "MeshConfig", "ModelConfig", "RULES", "RewardsConfig",
           "RunConfig", "SFTConfig", "SlideEncoderConfig", "VLConfig", "config_sources", "load_config", "parse_override",
           "problems", "validate"]
