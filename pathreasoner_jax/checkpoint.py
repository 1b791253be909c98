"""Orbax checkpoints: periodic async saves, keep-last-k, exact resume.

A checkpoint step holds `params` (the whole model state as a pure dict), `opt` (the
optimizer state, when training) and `meta` (JSON: step, next batch index, config
fingerprint, stage). Restoring reads arrays straight into the shardings of an abstract
target, so a resumed run never builds an unsharded copy.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from flax import nnx


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


class Checkpointer:
    def __init__(self, directory: str, keep_last: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep_last, enable_async_checkpointing=async_save,
                                            create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, model, opt_state: Any = None, meta: Optional[dict] = None, force: bool = False):
        items = {"params": ocp.args.StandardSave(params_dict(model)), "meta": ocp.args.JsonSave(meta or {})}
        if opt_state is not None:
            items["opt"] = ocp.args.StandardSave(opt_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, model, opt_state: Any = None, step: Optional[int] = None):
        """Loads params into `model` in place; returns (opt_state or None, meta)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        template = nnx.to_pure_dict(nnx.state(model))
        items = {"params": ocp.args.StandardRestore(_abstract(_str_keys(template))), "meta": ocp.args.JsonRestore()}
        if opt_state is not None:
            items["opt"] = ocp.args.StandardRestore(_abstract(opt_state))
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, _int_keys_like(out["params"], template))
        nnx.update(model, state)
        return (out["opt"] if opt_state is not None else None), dict(out["meta"])

    def resume(self, graphdef, trainable, frozen, opt_state, is_trainable):
        """Restores the latest step into split training state → (trainable, frozen, opt_state, meta)."""
        model = nnx.merge(graphdef, trainable, frozen)
        opt_state, meta = self.restore(model, opt_state)
        _, trainable, frozen = nnx.split(model, is_trainable, ...)
        return trainable, frozen, opt_state, meta

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(directory: str, model) -> dict:
    """Loads the latest params of a checkpoint directory into `model`; returns its meta."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: checkpoint directory does not exist")
    ck = Checkpointer(directory, async_save=False)
    try:
        _, meta = ck.restore(model)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{directory}: checkpoint does not match the configured model ({e})") from None
    finally:
        ck.close()
    return meta
