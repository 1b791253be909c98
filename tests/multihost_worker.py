"""Computes the tiny-model loss over a global 8-device mesh; run by test_multihost.py.

Started either as one process with 8 CPU devices, or as one of two processes with 4
each, joined through `pathreasoner_jax.distributed.initialize` (env-driven).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pathreasoner_jax import distributed  # noqa: E402

distributed.initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from pathreasoner_jax.models.factory import create_model  # noqa: E402
from pathreasoner_jax.sft.loss import sft_loss  # noqa: E402
from pathreasoner_jax.sharding import make_mesh, use_mesh  # noqa: E402
from tiny_vlm import IMAGE_ID, tiny_batch, tiny_config  # noqa: E402

mesh = make_mesh(2, 2, 2)
with use_mesh(mesh):
    model = create_model(tiny_config(), IMAGE_ID, mesh, seed=0)
    host = tiny_batch()
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    # each process supplies only the rows its devices hold
    batch = {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in host.items()}

    @nnx.jit
    def f(model, batch):
        s, n = sft_loss(model, batch, model.ctx())
        return s / n
    loss = f(model, batch)
    loss = float(np.asarray(loss.addressable_data(0)))  # replicated scalar: any local copy
print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} LOSS {loss:.8f}", flush=True)
