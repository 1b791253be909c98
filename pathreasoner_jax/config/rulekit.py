"""The building blocks of the value rules in `checks.py`, and the pass that applies them.

A rule is a `Check` on one dotted key. Most look at the value alone (`one_of`, `at_least`,
`in_range`, ...); a `Relation` also reads other keys (`refs`) and runs only after those
keys passed their own rules, so a relation never sees a value already reported bad
(no division by a zero `grad_accum`). Every problem becomes one line
`SOURCE: key 'KEY' must ..., got VALUE`, SOURCE being the file, `<command line>` or
`<default>` that set the key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from pathreasoner_jax.config.loader import DEFAULT

Problem = tuple  # (key, value, "must ..." text)


class Context:
    """Read access to the loaded config by dotted key, with each key's source."""

    def __init__(self, cfg: Any, sources: dict):
        self.cfg, self.sources = cfg, sources

    def get(self, key: str) -> Any:
        obj = self.cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    def source(self, key: str) -> str:
        return self.sources.get(key.split("[", 1)[0], DEFAULT)

    def explicit(self, key: str) -> bool:
        return self.source(key) != DEFAULT

    def show(self, key: str) -> str:
        """`key = value (source)`, to quote another key in a message."""
        return f"{key} = {self.get(key)!r} ({self.source(key)})"


class Check:
    """One rule on one key. `refs`: the other keys it reads (none for a rule on the value alone)."""

    @property
    def refs(self) -> tuple:
        return ()

    def problems(self, key: str, value: Any, ctx: Context) -> list[Problem]:
        raise NotImplementedError


def _why(text: str, why: str) -> str:
    return f"{text} ({why})" if why else text


@dataclass(frozen=True)
class Pred(Check):
    """The value alone satisfies `ok`; `need` says what is allowed."""
    ok: Callable[[Any], bool]
    need: str

    def problems(self, key, value, ctx):
        return [] if self.ok(value) else [(key, value, self.need)]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(*allowed, why: str = "") -> Pred:
    return Pred(lambda v: v in allowed, _why("must be one of " + ", ".join(map(repr, allowed)), why))


def at_least(n, why: str = "") -> Pred:
    return Pred(lambda v: _num(v) and v >= n, _why(f"must be >= {n}", why))


def above(n, why: str = "") -> Pred:
    return Pred(lambda v: _num(v) and v > n, _why(f"must be > {n}", why))


def in_range(lo, hi, *, lo_open: bool = False, hi_open: bool = False, why: str = "") -> Pred:
    """lo ≤ v ≤ hi, with either end open on request: [0, 1], (0, 1], [0, 1)."""
    def ok(v):
        return _num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    text = f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Pred(ok, _why(text, why))


def non_empty(why: str = "") -> Pred:
    return Pred(lambda v: len(v) > 0, _why("must not be empty", why))


@dataclass(frozen=True)
class Each(Check):
    """Every item of a list passes `check`; problems name the item as `key[i]`."""
    check: Check

    def problems(self, key, value, ctx):
        return [p for i, v in enumerate(value) for p in self.check.problems(f"{key}[{i}]", v, ctx)]


def each(check: Check) -> Each:
    return Each(check)


@dataclass(frozen=True)
class Relation(Check):
    """`ok(value, *values of keys)`; `need` may quote the keys as {0}, {1}, ... (`key = v (source)`)."""
    keys: tuple
    ok: Callable[..., bool]
    need: str
    why: str = ""

    @property
    def refs(self) -> tuple:
        return self.keys

    def problems(self, key, value, ctx):
        if self.ok(value, *(ctx.get(r) for r in self.refs)):
            return []
        return [(key, value, _why(self.need.format(*(ctx.show(r) for r in self.refs)), self.why))]


def relation(refs: Iterable[str], ok: Callable[..., bool], need: str, why: str = "") -> Relation:
    return Relation(tuple(refs), ok, need, why)


@dataclass(frozen=True)
class When(Check):
    """`check` applies only where `applies(key, ctx)` holds."""
    applies: Callable[[str, Context], bool]
    check: Check

    @property
    def refs(self):
        return self.check.refs

    def problems(self, key, value, ctx):
        return self.check.problems(key, value, ctx) if self.applies(key, ctx) else []


def if_set(check: Check) -> When:
    """Only when a file or the command line set the key (a default is not checked)."""
    return When(lambda key, ctx: ctx.explicit(key), check)


def if_no_hf_path(check: Check) -> When:
    """Only when the LLM sizes are the config's own (a set `model.llm.hf_path` replaces them)."""
    return When(lambda key, ctx: not ctx.get("model.llm.hf_path"), check)


def _checks(rule) -> tuple:
    return rule if isinstance(rule, tuple) else (rule,)


def find_problems(rules: dict, cfg: Any, sources: dict) -> list[str]:
    """Applies the table: first the checks of a value alone, then the relations between keys;
    a key stops at its first failing check and a relation skips keys that already failed."""
    ctx = Context(cfg, sources)
    bad: set[str] = set()
    found: list[str] = []
    for relations in (False, True):
        for key, rule in rules.items():
            for check in _checks(rule):
                if bool(check.refs) != relations or key in bad or bad.intersection(check.refs):
                    continue
                probs = check.problems(key, ctx.get(key), ctx)
                if probs:
                    bad.add(key)
                    found += [f"{ctx.source(k)}: key '{k}' {need}, got {v!r}" for k, v, need in probs]
    return found


def check_keys_exist(rules: dict, known: Iterable[str]) -> Optional[str]:
    """The first rule key or ref that names no config field (a typo in the table), else None."""
    known = set(known)
    for key, rule in rules.items():
        for name in (key, *(r for c in _checks(rule) for r in c.refs)):
            if name not in known:
                return name
    return None
