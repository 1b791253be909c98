"""Device mesh, logical-axis rules and sharding helpers (MaxText style).

Parameters carry `logical_axes` metadata (see models/layers.py); activations are
constrained with `constrain(x, ("batch", "length", "act_embed"))`. `LOGICAL_RULES` maps
each logical name to mesh axes; a name absent from the rules is replicated. When a
dimension is not divisible by the mesh axes its rule names, that dimension is replicated
instead (e.g. 2 KV heads on tensor=4), so every preset compiles on every mesh.

The `context` axis (size 1 unless `mesh.context` says otherwise) splits sequences: the
patch sequence of LongNet (`patches`, models/longnet_context.py) and the LLM's token
sequence (`length`); attention gathers the keys and values it needs (`kv_length` is
replicated: models/qwen2.py says why an all-gather and not a ring).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

# (logical name, mesh axes). FSDP shards the model dimension of weights; tensor
# parallelism shards heads, MLP width and vocabulary; the batch spans data × fsdp.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("slide_embed", None),
    ("slide_mlp", None),
    ("lora_rank", None),
    ("norm", None),
    ("length", "context"),
    ("patches", "context"),
    ("kv_length", None),
    ("act_kv_heads", "tensor"),
    ("act_embed", None),
)

_state: dict[str, Any] = {"mesh": None, "rules": LOGICAL_RULES}


def resolve_mesh_sizes(n: int, data: int, fsdp: int, tensor: int, context: int = 1) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with a -1 replaced by what the `n` devices leave besides the
    `context` axis (ValueError if none fits)."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1) * context
    if -1 in sizes:
        if n % known:
            raise ValueError(f"mesh: {n} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = n // known
    return tuple(sizes)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None, context: int = 1) -> Mesh:
    """Mesh with axes (data, fsdp, context, tensor); one of data/fsdp/tensor may be -1
    ("the remaining devices")."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    d, f, t = resolve_mesh_sizes(n, data, fsdp, tensor, context)
    sizes = (d, f, context, t)
    if math.prod(sizes) > n or n % math.prod(sizes):
        raise ValueError(f"mesh: data*fsdp*context*tensor = {math.prod(sizes)} does not fit the {n} devices present")
    # fully specified and smaller than the machine (a debugging run): the first devices
    arr = np.asarray(devices[:math.prod(sizes)]).reshape(sizes)
    return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)


def mesh_from_config(mesh_cfg) -> Mesh:
    return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, context=getattr(mesh_cfg, "context", 1))


def context_size(mesh: Optional[Mesh] = None) -> int:
    """Devices along `context` in `mesh` (default: the active mesh); 1 without one."""
    mesh = mesh or _state["mesh"]
    return 1 if mesh is None else int(mesh.shape.get("context", 1))


@contextlib.contextmanager
def use_mesh(mesh: Optional[Mesh], rules=LOGICAL_RULES) -> Iterator[None]:
    """Makes `mesh` the target of `constrain` and of parameter shardings inside the block."""
    old = dict(_state)
    _state.update(mesh=mesh, rules=rules)
    try:
        yield
    finally:
        _state.update(old)


def current_mesh() -> Optional[Mesh]:
    return _state["mesh"]


def logical_to_spec(axes: Sequence[Optional[str]], shape: Optional[Sequence[int]] = None,
                    mesh: Optional[Mesh] = None, rules=None) -> P:
    """Maps logical names to a PartitionSpec; undivisible dims and reused mesh axes replicate."""
    rules = dict(rules or _state["rules"])
    mesh = mesh or _state["mesh"]
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        target = rules.get(name) if name else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        if mesh is not None:
            names = tuple(a for a in names if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
            if shape is not None and names and shape[i] % math.prod(mesh.shape[a] for a in names):
                names = ()
        used.update(names)
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*out)


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh is active."""
    mesh = _state["mesh"]
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh)))


def _axes_of(var: nnx.Variable) -> tuple:
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
        return (None,) * np.ndim(var.get_value())
    return tuple(axes)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """A NamedSharding for every leaf of an nnx State, from its logical axes."""
    def one(var):
        if isinstance(var, nnx.Variable):
            spec = logical_to_spec(_axes_of(var), np.shape(var.get_value()), mesh)
            return var.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: nnx.State, mesh: Mesh) -> nnx.State:
    return jax.device_put(state, state_shardings(state, mesh))
