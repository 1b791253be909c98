"""Multi-host start-up: `jax.distributed.initialize` from config or environment.

Sources, first match wins: the `mesh` config section (coordinator_address,
num_processes, process_id), then PATHREASONER_COORDINATOR / PATHREASONER_NUM_PROCESSES
/ PATHREASONER_PROCESS_ID, then the cluster auto-detection JAX does itself (SLURM, TPU
pods, Kubernetes) when PATHREASONER_AUTO_DISTRIBUTED=1. With one process it is a no-op.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def resolve(mesh_cfg=None) -> dict | None:
    """The initialize() arguments, or None for a single process."""
    env = os.environ
    addr = (mesh_cfg.coordinator_address if mesh_cfg else "") or env.get("PATHREASONER_COORDINATOR", "")
    nproc = (mesh_cfg.num_processes if mesh_cfg else 0) or int(env.get("PATHREASONER_NUM_PROCESSES", "0"))
    pid = mesh_cfg.process_id if mesh_cfg and mesh_cfg.process_id >= 0 else int(env.get("PATHREASONER_PROCESS_ID", "-1"))
    if nproc > 1:
        if not addr or pid < 0:
            raise ValueError("multi-host: num_processes > 1 needs coordinator_address and process_id "
                             "(config mesh.* or PATHREASONER_COORDINATOR / PATHREASONER_PROCESS_ID)")
        args = {"coordinator_address": addr, "num_processes": nproc, "process_id": pid}
        if mesh_cfg is not None and mesh_cfg.local_device_ids:
            args["local_device_ids"] = list(mesh_cfg.local_device_ids)
        return args
    if env.get("PATHREASONER_AUTO_DISTRIBUTED") == "1":
        return {}
    return None


def initialize(mesh_cfg=None) -> None:
    """Idempotent; call before any other JAX work."""
    global _initialized
    if _initialized:
        return
    args = resolve(mesh_cfg)
    if args is None:
        return
    # CPU processes need a collectives backend; this only affects the CPU client, and
    # asking for the backend here would initialise XLA before distributed start-up.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
    _initialized = True
    log.info("process %d/%d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
