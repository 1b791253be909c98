"""Orbax checkpoints: periodic async saves, keep-last-k, exact resume, verified integrity.

A checkpoint step holds `params` (the whole model state as a pure dict), `opt` (the
optimizer state, when training) and `meta` (JSON: step, next batch index, config
fingerprint, stage). Restoring reads arrays straight into the shardings of an abstract
target, so a resumed run never builds an unsharded copy.

Integrity: once a save has completed (orbax saves asynchronously: at the next save,
`wait` or `close`), host 0 writes `<step>/integrity.json` with the size and sha256 of
every file of the step (atomically, `core.io.write_json`). `latest_step`, `restore`,
`resume` and `restore_params` use the newest *intact* step: a step whose files are
missing, truncated, changed or unreadable is skipped with a one-line warning; a step
without a record (an older version's, or one killed between its commit and its record)
is used with a warning. No intact step at all, a params tree that does not match the
model, and a save of non-finite params are one-line `CheckpointError`s.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from pathreasoner_jax.core.errors import UserError, one_line
from pathreasoner_jax.core.io import sha256_file, write_json
from pathreasoner_jax.hf.record import RECORD_KEY, differences
from pathreasoner_jax.metrics_log import warn0

INTEGRITY = "integrity.json"
_FORMAT = 1


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used (none intact, or not this model); one line."""


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def params_dict(model_or_state) -> dict:
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
    return _str_keys(nnx.to_pure_dict(state))


def _str_keys(d):
    """Orbax stores dict keys as strings; nnx.List indices are ints."""
    return {str(k): _str_keys(v) for k, v in d.items()} if isinstance(d, dict) else d


def _int_keys_like(restored, template):
    if not isinstance(template, dict):
        return restored
    return {k: _int_keys_like(restored[str(k)], v) for k, v in template.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, name) if isinstance(v, dict) else {name: v})
    return out


def _is_key(x) -> bool:
    """PRNG keys are stored as their raw uint32 data, of another shape."""
    return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


# ------------------------------------------------------------------ integrity records
def _step_files(step_dir: str) -> list[str]:
    """Every file of a step (relative paths, sorted), minus the record and its temporaries."""
    files = []
    for root, _, names in os.walk(step_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), step_dir)
            if rel == INTEGRITY or rel.startswith(f".tmp-{INTEGRITY}-"):
                continue
            files.append(rel)
    return sorted(files)


def write_integrity(step_dir: str, step: int) -> str:
    """Writes `<step_dir>/integrity.json`: size and sha256 of every file of the step."""
    files = {rel: {"bytes": os.path.getsize(os.path.join(step_dir, rel)),
                   "sha256": sha256_file(os.path.join(step_dir, rel))} for rel in _step_files(step_dir)}
    return write_json(os.path.join(step_dir, INTEGRITY), {"format": _FORMAT, "step": step, "files": files})


def verify_step(step_dir: str) -> tuple[str, bool]:
    """→ (problem, has_record): problem "" when the step's files match its record."""
    record = os.path.join(step_dir, INTEGRITY)
    if not os.path.exists(record):
        return "", False
    try:
        with open(record) as f:
            files = json.load(f)["files"]
        items = [(rel, int(v["bytes"]), str(v["sha256"])) for rel, v in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"integrity record unreadable ({one_line(e, 120)})", True
    for rel, size, digest in items:
        path = os.path.join(step_dir, rel)
        try:
            if not os.path.exists(path):
                return f"file {rel} is missing", True
            got = os.path.getsize(path)
            if got != size:
                kind = "truncated" if got < size else "longer than recorded"
                return f"file {rel} is {kind} ({got} of {size} bytes)", True
            if sha256_file(path) != digest:
                return f"file {rel} fails its sha256 check", True
        except OSError as e:
            return f"file {rel} is unreadable ({one_line(e, 120)})", True
    return "", True


@jax.jit
def _finite_leaves(leaves: list):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]) if leaves else jnp.ones((0,), bool)


def non_finite_paths(tree: dict) -> list[str]:
    """Dotted paths of the float leaves of a (pure dict) tree holding NaN or inf."""
    flat = {k: v for k, v in _flat(tree).items() if jnp.issubdtype(getattr(v, "dtype", np.int32), jnp.inexact)}
    if not flat:
        return []
    ok = np.asarray(jax.device_get(_finite_leaves(list(flat.values()))))
    return [k for k, good in zip(flat, ok) if not good]


class Checkpointer:
    def __init__(self, directory: str, keep_last: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep_last, enable_async_checkpointing=async_save,
                                            create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts)
        self._pending: list[int] = []  # saved here, record not yet written
        self._verdict: dict[int, tuple[str, bool]] = {}
        self._warned: set = set()
        self.restored_step: Optional[int] = None
        self._closed = False

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    # ---------------------------------------------------------------- integrity
    def _record_pending(self) -> None:
        """After the manager finished: writes the record of every step saved since."""
        pending, self._pending = self._pending, []
        if jax.process_index() != 0:
            return
        for s in pending:
            if os.path.isdir(self.step_dir(s)):  # not already removed by keep-last
                write_integrity(self.step_dir(s), s)
                self._verdict.pop(s, None)

    def _check(self, step: int) -> str:
        """"" when `step` may be used (warning once when it is unverified), else the problem."""
        if step not in self._verdict:
            self._verdict[step] = verify_step(self.step_dir(step))
        problem, has_record = self._verdict[step]
        if not problem and not has_record and step not in self._warned:
            self._warned.add(step)
            warn0(f"{self.directory}: step {step} has no {INTEGRITY} (written by an older version, or the run "
                  "stopped before recording it); using it unverified")
        return problem

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def _intact(self, warn: bool = True) -> tuple[Optional[int], list[str]]:
        """→ (the newest intact step or None, the problems of the newer steps)."""
        self.wait()
        problems = []
        for s in reversed(self.steps()):
            problem = self._check(s)
            if not problem:
                return s, problems
            problems.append(f"step {s}: {problem}")
            if warn and s not in self._warned:
                self._warned.add(s)
                warn0(f"{self.directory}: skipping step {s}: {problem}")
        return None, problems

    def latest_intact_step(self) -> Optional[int]:
        """The newest intact step, or None (no step, or none intact); never raises."""
        return self._intact(warn=False)[0]

    def latest_step(self) -> Optional[int]:
        """The newest intact step; None when there is no step at all. `CheckpointError` when
        there are steps and none is intact."""
        step, problems = self._intact()
        if step is None and problems:
            raise CheckpointError(f"{self.directory}: no intact checkpoint ({'; '.join(problems)}); "
                                  "rerun the stage with --force to start it afresh")
        return step

    # ---------------------------------------------------------------- save / restore
    def save(self, step: int, model, opt_state: Any = None, meta: Optional[dict] = None, force: bool = False):
        params = params_dict(model)
        bad = non_finite_paths(params)
        if bad:
            raise CheckpointError(f"{self.directory}: refusing to save step {step}: non-finite values in "
                                  f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}")
        self.wait()  # the previous save finished (orbax would wait here too): record it
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta or {})}
        if opt_state is not None:
            items["opt"] = ocp.args.StandardSave(opt_state)
        if self.manager.save(step, args=ocp.args.Composite(**items), force=force):
            self._pending.append(step)
            self._verdict.pop(step, None)

    def _mismatch(self, step: int, template: dict) -> str:
        """A readable description of how the stored params differ from the model's ("": none)."""
        try:
            from etils import epath
            md = ocp.StandardCheckpointHandler().metadata(epath.Path(self.step_dir(step)) / "params")
            stored = _flat(getattr(md, "tree", md))
        except Exception:  # noqa: BLE001 - metadata is a courtesy; restore reports the rest
            return ""
        wanted = _flat(_str_keys(template))
        missing = sorted(set(wanted) - set(stored))
        extra = sorted(set(stored) - set(wanted))
        shapes = [k for k in sorted(set(wanted) & set(stored))
                  if getattr(stored[k], "shape", None) is not None and not _is_key(wanted[k])
                  and tuple(stored[k].shape) != tuple(wanted[k].shape)]
        parts = []
        few = lambda ks: ", ".join(ks[:3]) + (f" (+{len(ks) - 3} more)" if len(ks) > 3 else "")  # noqa: E731
        if missing:
            parts.append(f"missing from the checkpoint: {few(missing)}")
        if extra:
            parts.append(f"not in the model: {few(extra)}")
        for k in shapes[:3]:
            parts.append(f"{k} has shape {tuple(stored[k].shape)} in the checkpoint, {tuple(wanted[k].shape)} "
                         "in the model")
        return "; ".join(parts)

    def _check_recorded(self, step: int, model) -> None:
        """A step that records the model it was built for (hf-import) must match `model`."""
        try:
            meta = dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception:  # noqa: BLE001 - no readable meta: the params checks below still apply
            return
        diff = differences(meta[RECORD_KEY], model) if isinstance(meta.get(RECORD_KEY), dict) else []
        if diff:
            raise CheckpointError(f"{self.directory}: step {step} was built for another model config "
                                  f"({'; '.join(diff)}); use the config it was imported with, or re-run "
                                  "hf-import with this one")

    def restore(self, model, opt_state: Any = None, step: Optional[int] = None):
        """Loads params into `model` in place; returns (opt_state or None, meta). Without
        `step`: the newest intact step."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        else:
            self.wait()
            if step not in self.steps():
                raise FileNotFoundError(f"{self.directory}: no checkpoint step {step}")
            problem = self._check(step)
            if problem:
                raise CheckpointError(f"{self.directory}: step {step} is damaged: {problem}")
        self._check_recorded(step, model)
        template = nnx.to_pure_dict(nnx.state(model))
        mismatch = self._mismatch(step, template)
        if mismatch:
            raise CheckpointError(f"{self.directory}: step {step} does not match the configured model ({mismatch})")
        items = {"params": ocp.args.StandardRestore(_abstract(_str_keys(template))), "meta": ocp.args.JsonRestore()}
        if opt_state is not None:
            items["opt"] = ocp.args.StandardRestore(_abstract(opt_state))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{self.directory}: step {step} cannot be restored into the configured model "
                                  f"and optimizer ({one_line(e, 300)})") from None
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, _int_keys_like(out["params"], template))
        nnx.update(model, state)
        self.restored_step = step
        return (out["opt"] if opt_state is not None else None), dict(out["meta"])

    def resume(self, graphdef, trainable, frozen, opt_state, is_trainable):
        """Restores the newest intact step into split training state → (trainable, frozen,
        opt_state, meta). Damaged newer steps are moved aside (`<step>.corrupt`) so the
        resumed run can save those step numbers again."""
        model = nnx.merge(graphdef, trainable, frozen)
        opt_state, meta = self.restore(model, opt_state)
        self._set_aside_newer(self.restored_step)
        _, trainable, frozen = nnx.split(model, is_trainable, ...)
        return trainable, frozen, opt_state, meta

    def _set_aside_newer(self, step: int) -> None:
        newer = [s for s in self.steps() if s > step]
        if newer and jax.process_index() == 0:
            for s in newer:
                dest, n = f"{self.step_dir(s)}.corrupt", 1
                while os.path.exists(dest):
                    dest, n = f"{self.step_dir(s)}.corrupt{n}", n + 1
                os.rename(self.step_dir(s), dest)
                self._verdict.pop(s, None)
                warn0(f"{self.directory}: damaged step {s} moved to {os.path.basename(dest)}")
        if newer and jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("pathreasoner_ckpt_set_aside")
        if newer:
            self.manager.reload()

    def wait(self):
        self.manager.wait_until_finished()
        self._record_pending()

    def close(self):
        if self._closed:
            return
        self.wait()
        self.manager.close()
        self._closed = True


def restore_params(directory: str, model) -> dict:
    """Loads the newest intact params of a checkpoint directory into `model`; returns its meta."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: checkpoint directory does not exist")
    ck = Checkpointer(directory, async_save=False)
    try:
        _, meta = ck.restore(model)
    except KeyError as e:
        raise CheckpointError(f"{directory}: checkpoint does not match the configured model ({one_line(e, 300)})") \
            from None
    finally:
        ck.close()
    return meta
