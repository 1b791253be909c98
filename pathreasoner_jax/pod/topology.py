"""Cloud TPU slice names → libtpu topologies, and the per-chip figures the roofline uses.

Cloud TPU names a slice by generation and a count: for v4 and v5p the count is
TensorCores (2 per chip: `v5p-128` is 64 chips, 4x4x4), for v5e and v6e it is chips
(`v5e-64` is 64 chips, 8x8; `v5litepod-64` is the same slice). The physical shapes are
those of Cloud TPU's topology tables (3-D tori for v4/v5p, 2-D for v5e/v6e).

Devices: libtpu's deviceless v5p/v5e/v6e topologies have one JAX device per chip (v5p's
two TensorCores act as one "megacore" device); its v4 topologies have one device per
TensorCore, so for v4 every per-device figure below is half a chip's.

Per-chip figures (Cloud TPU system-architecture pages, bf16 peak; ICI is the "interchip
interconnect bandwidth" per chip, in bytes/s; v4's ICI figure is 6 links × 400 Gb/s
taken as one number): coarse enough for a roofline, not for a stopwatch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pathreasoner_jax.core.errors import UserError

GB = 1e9
GiB = 1 << 30


@dataclass(frozen=True)
class Chip:
    generation: str
    device_kind: str  # what libtpu's devices report
    hbm_bytes: int  # per chip
    peak_bf16_flops: float  # per chip, FLOP/s
    hbm_bytes_per_s: float
    ici_bytes_per_s: float
    cores_per_chip: int  # TensorCores
    devices_per_chip: int  # JAX devices per chip in libtpu's deviceless topology
    dims: int  # torus dimensions


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GiB, 275e12, 1200 * GB, 2400 / 8 * GB, 2, 2, 3),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GiB, 197e12, 819 * GB, 1600 / 8 * GB, 1, 1, 2),
    "v5p": Chip("v5p", "TPU v5", 95 * GiB, 459e12, 2765 * GB, 4800 / 8 * GB, 2, 1, 3),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GiB, 918e12, 1640 * GB, 3584 / 8 * GB, 1, 1, 2),
}
ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}

# chips → physical shape (Cloud TPU's tables; the common single-slice shapes)
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


@dataclass(frozen=True)
class Slice:
    name: str  # as given, e.g. "v5p-128"
    chip: Chip
    chips: int
    shape: str  # e.g. "4x4x4"
    num_slices: int = 1

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.generation}:{self.shape}"

    @property
    def num_devices(self) -> int:
        return self.chips * self.chip.devices_per_chip * self.num_slices

    @property
    def device_hbm_bytes(self) -> int:
        return self.chip.hbm_bytes // self.chip.devices_per_chip

    @property
    def device_peak_flops(self) -> float:
        return self.chip.peak_bf16_flops / self.chip.devices_per_chip

    @property
    def device_hbm_bw(self) -> float:
        return self.chip.hbm_bytes_per_s / self.chip.devices_per_chip

    @property
    def device_ici_bw(self) -> float:
        return self.chip.ici_bytes_per_s / self.chip.devices_per_chip

    def describe(self) -> str:
        slices = f" × {self.num_slices} slices" if self.num_slices > 1 else ""
        return (f"{self.name}{slices}: {self.chips} {self.chip.generation} chips ({self.shape}), "
                f"{self.num_devices} JAX devices of {self.device_hbm_bytes / GiB:.0f} GiB")


HELP = ("Cloud TPU slice name: v4-N or v5p-N (N TensorCores, 2 per chip: v5p-128 = 64 chips 4x4x4), "
        "v5e-N / v5litepod-N or v6e-N (N chips: v5e-64 = 8x8); or a libtpu topology such as v5p:2x2x2")


def parse_slice(name: str, num_slices: int = 1) -> Slice:
    """`v5p-128`, `v5e-64`, `v5litepod-16`, `v6e-256`, `v4-128`, or `v5p:4x4x4` → Slice."""
    if num_slices < 1:
        raise UserError(f"--num-slices must be >= 1, got {num_slices}")
    m = re.fullmatch(r"(v\d+[a-z]*)[:]((?:\d+x)+\d+)", name.strip())
    if m:
        gen = ALIASES.get(m.group(1), m.group(1))
        chip = _chip(gen, name)
        dims = [int(d) for d in m.group(2).split("x")]
        if len(dims) != chip.dims:
            raise UserError(f"{name}: {gen} topologies have {chip.dims} dimensions")
        return Slice(name, chip, math.prod(dims), m.group(2), num_slices)
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip())
    if not m:
        raise UserError(f"{name!r} is not a TPU slice name. {HELP}")
    gen = ALIASES.get(m.group(1), m.group(1))
    chip = _chip(gen, name)
    count = int(m.group(2))
    chips = count // chip.cores_per_chip if chip.cores_per_chip > 1 else count
    if chips * chip.cores_per_chip != count and chip.cores_per_chip > 1:
        raise UserError(f"{name}: {gen} counts TensorCores ({chip.cores_per_chip} per chip); {count} is not a "
                        f"whole number of chips")
    table = SHAPES_3D if chip.dims == 3 else SHAPES_2D
    if chips not in table:
        raise UserError(f"{name}: no standard {gen} slice of {chips} chips; known sizes "
                        f"{sorted(k * chip.cores_per_chip for k in table)} (or give a topology, e.g. "
                        f"{gen}:{next(iter(table.values()))})")
    return Slice(name, chip, chips, table[chips], num_slices)


def _chip(gen: str, name: str) -> Chip:
    if gen not in CHIPS:
        raise UserError(f"{name}: unknown TPU generation {gen!r}; known: {', '.join(sorted(CHIPS))} "
                        f"(and {', '.join(sorted(ALIASES))})")
    return CHIPS[gen]


def libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


# no GCE metadata server or TPU workers to ask: libtpu only describes the topology
TPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
           "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}  # deviceless compiles in several processes (pytest -n)
INSTALL_HINT = "the TPU compiler is missing: pip install \"jax[tpu]\" (it brings libtpu; no TPU needed)"


def slice_devices(sl: Slice) -> list:
    """The JAX devices of the slice, from libtpu's deviceless topology (no TPU attached)."""
    if not libtpu_available():
        raise UserError(INSTALL_HINT)
    import os
    for k, v in TPU_ENV.items():
        os.environ.setdefault(k, v)
    from jax.experimental import topologies
    kwargs = {"num_slices": sl.num_slices} if sl.num_slices > 1 else {}
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=sl.libtpu_name, **kwargs)
    except Exception as e:  # libtpu's refusal, e.g. an unsupported multi-slice shape
        from pathreasoner_jax.core.errors import one_line
        raise UserError(f"{sl.name}: libtpu cannot describe topology {sl.libtpu_name} "
                        f"(slices {sl.num_slices}): {one_line(e, 300)}") from None
    devices = list(topo.devices)
    if len(devices) != sl.num_devices:
        raise UserError(f"{sl.name}: libtpu gave {len(devices)} devices for {sl.libtpu_name}, expected "
                        f"{sl.num_devices}")
    return devices
