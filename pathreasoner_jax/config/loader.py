"""YAML (with `base:`) plus `key=value` overrides → a `Config`, and where each key came from.

A file may name a base with `base: other.yaml` (relative to itself); the file's keys
override the base's. An unknown key or a value of the wrong type raises `ConfigError`
naming the key and the file that set it (or `<command line>`). Every leaf key of the tree
gets a source: the YAML file that set it last (a base's key overridden by the file that
names the base is the file's), `<command line>` for an override, else `<default>`; the
value rules (`checks.py`) quote that source in their errors.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Callable, Optional

import yaml

from pathreasoner_jax.config.schema import Config
from pathreasoner_jax.core.errors import ConfigError

COMMAND_LINE = "<command line>"
DEFAULT = "<default>"

Sources = dict  # dotted leaf key → the YAML path, COMMAND_LINE or DEFAULT


def _check_value(value: Any, tp: Any, key: str, source: str) -> Any:
    """Returns `value` converted to `tp` where lossless (int → float), else raises."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(value, args[0], key, source)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' expects a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_check_value(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{source}: key '{key}' expects {tp.__name__}, got "
                              f"{type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}' has unsupported type {tp}")


def _merge_into(obj: Any, data: dict, source_of: Callable[[str], str], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{source_of(key)}: unknown key '{key}' (known here: {known})")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{source_of(key)}: key '{key}' is a section and expects a mapping, got {v!r}")
            _merge_into(getattr(obj, k), v, source_of, key + ".")
        else:
            setattr(obj, k, _check_value(v, tp, key, source_of(key)))


def leaf_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the non-mapping values of a nested dict (a list is one leaf)."""
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.extend(leaf_keys(v, key + ".") if isinstance(v, dict) and v else [key])
    return out


def field_keys(tp: Any = Config, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf field of a config dataclass, in declaration order."""
    out = []
    for name, t in typing.get_type_hints(tp).items():
        key = f"{prefix}{name}"
        out.extend(field_keys(t, key + ".") if dataclasses.is_dataclass(t) else [key])
    return out


def _load_yaml(path: str) -> tuple[dict, Sources]:
    """The merged mapping of `path` and its bases, and the file that set each leaf key."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    sources = {k: path for k in leaf_keys(data)}
    if base:
        parent, parent_sources = _load_yaml(os.path.join(os.path.dirname(path), base))
        data = _deep_update(parent, data)
        sources = {**parent_sources, **sources}
    return data, sources


def _deep_update(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _lookup(sources: Sources, fallback: str) -> Callable[[str], str]:
    """key → the source of that key, of the first key below it (a section), else `fallback`."""
    def source_of(key: str) -> str:
        if key in sources:
            return sources[key]
        below = [s for k, s in sources.items() if k.startswith(key + ".")]
        return below[0] if below else fallback
    return source_of


def _field_type(keys: list[str]) -> Any:
    tp: Any = Config
    for k in keys:
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if k not in hints:
            return None
        tp = hints[k]
    return tp


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=v` → (["a", "b"], v); v parsed as YAML unless the field is a string."""
    if "=" not in item:
        raise ConfigError(f"{COMMAND_LINE}: override '{item}' is not key=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    tp = _field_type(keys)
    if tp is str:
        return keys, raw
    if tp is float:  # YAML 1.1 reads "1e-3" as a string
        try:
            return keys, float(raw)
        except ValueError:
            pass
    try:
        return keys, yaml.safe_load(raw)
    except yaml.YAMLError:
        return keys, raw


def load_unchecked(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> tuple[Config, Sources]:
    """The config (keys and types checked, values not) and the source of every leaf key."""
    cfg = Config()
    sources: Sources = {}
    if path:
        data, file_sources = _load_yaml(path)
        _merge_into(cfg, data, _lookup(file_sources, path))
        sources.update(file_sources)
    for item in overrides or []:
        keys, value = parse_override(item)
        for k in reversed(keys):
            value = {k: value}
        _merge_into(cfg, value, lambda _key: COMMAND_LINE)
        sources.update({k: COMMAND_LINE for k in leaf_keys(value)})
    return cfg, {k: sources.get(k, DEFAULT) for k in field_keys()}
