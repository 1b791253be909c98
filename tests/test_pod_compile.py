"""Deviceless compilation for TPU slices (libtpu, no TPU attached): slice names, the three
jitted stages compiled for v5e-4 with XLA's per-chip figures checked against hand counts,
the HLO collective counter on a hand-written module, and the mesh planner's ranking."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.pod import topology as T
from pathreasoner_jax.pod.hlo import collective_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
needs_libtpu = pytest.mark.skipif(not T.libtpu_available(), reason="libtpu not installed (pip install 'jax[tpu]')")


@pytest.mark.parametrize("name, gen, chips, shape", [
    ("v5p-128", "v5p", 64, "4x4x4"),  # TensorCores: 2 per chip
    ("v5p-64", "v5p", 32, "2x4x4"),
    ("v4-128", "v4", 64, "4x4x4"),
    ("v5e-64", "v5e", 64, "8x8"),  # chips
    ("v5litepod-16", "v5e", 16, "4x4"),
    ("v6e-256", "v6e", 256, "16x16"),
    ("v5e-8", "v5e", 8, "2x4"),
    ("v5p:2x2x2", "v5p", 8, "2x2x2"),
])
def test_slice_names_map_to_chips_and_shapes(name, gen, chips, shape):
    sl = T.parse_slice(name)
    assert (sl.chip.generation, sl.chips, sl.shape) == (gen, chips, shape)
    assert sl.libtpu_name == f"{gen}:{shape}"
    # libtpu's v4 has a device per TensorCore; v5p/v5e/v6e one per chip
    assert sl.num_devices == chips * (2 if gen == "v4" else 1)


@pytest.mark.parametrize("bad, says", [("v5p-100", "no standard"), ("v5p-7", "whole number"),
                                       ("v9x-8", "unknown TPU generation"), ("tpu-8", "not a TPU slice name"),
                                       ("v5e:2x2x2", "2 dimensions")])
def test_bad_slice_names_say_why(bad, says):
    with pytest.raises(UserError, match=says):
        T.parse_slice(bad)


def test_missing_libtpu_names_the_install(monkeypatch):
    monkeypatch.setattr(T, "libtpu_available", lambda: False)
    with pytest.raises(UserError, match=r'pip install "jax\[tpu\]"'):
        T.slice_devices(T.parse_slice("v5e-4"))


HLO = """HloModule m

%body (p: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %p = (s32[], f32[8,128]) parameter(0)
  %x = f32[8,128]{1,0:T(8,128)} get-tuple-element(%p), index=1
  %ar = f32[8,128]{1,0:T(8,128)} all-reduce(%x), replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (s32[], f32[8,128]) tuple(%i, %ar)
}

%cond (p: (s32[], f32[8,128])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main.1_spmd (a: bf16[16,256]) -> f32[8,128] {
  %a = bf16[16,256]{1,0} parameter(0)
  %ag = bf16[64,256]{1,0} all-gather(%a), dimensions={0}
  %ags = (bf16[16,256]{1,0}, bf16[64,256]{1,0}) all-gather-start(%a), dimensions={0}
  %w = (s32[], f32[8,128]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %u = (s32[], f32[8,128]) while(%init), condition=%cond, body=%body
  ROOT %r = f32[8,128] get-tuple-element(%w), index=1
}
"""


REPORT = """Memory Space: default (color=0)
Total bytes: 3353743360 (3.12GiB)
  cumulative_size;       size;       offset; used_by_n_values; shapes_list
  ------------------------------------------------------------
    1.16GiB( 29%);    1.16GiB;   1918304256;                1; f32[1,2048,151936]
    2.32GiB( 57%);    1.16GiB;    673644544;                4; bf16[1,2048,896], f32[2048,151936]
    2.79GiB( 69%);  224.00MiB;    358776832;                1; f32[1,2,2048,7,2048]
   3.51GiB( 86%);   64.00MiB;    205914112;                2; 2×f32[1,2,8,1024,1024]
  The rest 3937 values are less than 5% of the total size and not shown.

  cumulative_size;       size;       offset; used_by_n_values; shapes_list
  ------------------------------------------------------------
   64.91MiB(100%);   64.91MiB;            0;                1; f32[151936,112]
"""


def test_memory_report_rows_are_read_largest_first_from_the_default_space():
    from pathreasoner_jax.pod.buffers import largest_allocations
    rows = largest_allocations(REPORT, n=3)
    assert [r["bytes"] for r in rows] == [int(1.16 * 2**30), int(1.16 * 2**30), 224 * 2**20]
    assert rows[1] == {"bytes": int(1.16 * 2**30), "values": 4, "shapes": "bf16[1,2048,896], f32[2048,151936]"}
    # the second table (another memory space) is not the heap
    assert all("151936,112" not in r["shapes"] for r in largest_allocations(REPORT, n=10))


def test_collective_counter_on_a_hand_written_module():
    c = collective_bytes(HLO, unknown_trip_count=3)
    # the all-gather: 64·256 bf16 = 32768 B; the async start: its larger buffer, the same
    assert c["by_kind"]["all-gather"] == {"count": 2, "bytes": 2 * 32768}
    # the body's all-reduce of 8·128 f32 = 4096 B runs 5 times (known trip count) + 3 (unknown)
    assert c["by_kind"]["all-reduce"] == {"count": 8, "bytes": 8 * 4096}
    assert c["ici_bytes"] == 2 * 32768 + 2 * 8 * 4096  # an all-reduce moves twice its size


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if not T.libtpu_available():
        pytest.skip("libtpu not installed (pip install 'jax[tpu]')")
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.pod.cli import compile_config
    cfg = load_config(os.path.join(HERE, "pod_tiny.yaml"))
    sl = T.parse_slice("v5e-4")
    devices = T.slice_devices(sl)
    dump = str(tmp_path_factory.mktemp("xla_dump"))
    return cfg, sl, devices, compile_config(cfg, sl, ("sft", "grpo", "rollout"), devices, log=lambda *_: None,
                                            dump_dir=dump), dump


@needs_libtpu
def test_three_stages_compile_and_fit(tiny):
    _, _, _, rep, _ = tiny
    assert rep["device_kind"] == "TPU v5 lite" and rep["mesh"] == {"data": 1, "fsdp": 4, "context": 1, "tensor": 1}
    names = {s: [p["name"] for p in rep["stages"][s]["parts"]] for s in rep["stages"]}
    assert names == {"sft": ["sft_step"], "grpo": ["grpo_logprobs", "grpo_update"], "rollout": ["rollout"]}
    for s in rep["stages"].values():
        assert s["fits"] and 0 < s["peak_bytes"] < 16 * T.GiB and s["step_time_s"] > 0
    # FSDP gathers weights: the SFT step has all-gathers, and reduces gradients
    assert rep["stages"]["sft"]["parts"][0]["collectives"]["all-gather"]["count"] > 0


def _shard_bytes(shape, spec, mesh_shape, itemsize) -> int:
    """Bytes of one device's shard: each dimension divided by the mesh axes its spec names."""
    n = 1
    for i, d in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        axes = (axes,) if isinstance(axes, str) else (axes or ())
        n *= d // math.prod(mesh_shape[a] for a in axes)
    return n * itemsize


@needs_libtpu
def test_sft_argument_bytes_are_the_sharded_params_optimizer_and_batch(tiny):
    import jax
    from flax import nnx
    from pathreasoner_jax.models.factory import resolve_model_config
    from pathreasoner_jax.pod.cli import topology_mesh
    from pathreasoner_jax.pod.stages import abstract_sharded_model
    cfg, _, devices, rep, _ = tiny
    mesh = topology_mesh(devices, 1, 4, 1)
    model = abstract_sharded_model(resolve_model_config(cfg.model), mesh)
    shape = dict(mesh.shape)
    params = sum(_shard_bytes(x.shape, x.sharding.spec, shape, np.dtype(x.dtype).itemsize)
                 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    b, t, p, f = cfg.sft.batch_size // 4, 256, cfg.data.sample_num, cfg.model.slide.feature_dim
    batch = b * t * (4 + 1 + 4 + 4) + b * p * f * 4 + b * p  # ids, valid, targets, weights | features, patch valid
    # full fine-tuning: every parameter has AdamW's two moments, sharded like it
    expected = 3 * params + batch
    got = rep["stages"]["sft"]["parts"][0]["memory"]["arguments"]
    scalars = 4  # the step, two AdamW counts, the dropout key: each padded to at most one 4 KiB tile
    assert expected <= got <= expected + scalars * 4096, (got, expected)


@needs_libtpu
def test_dump_dir_holds_each_executable_and_its_heap_report(tiny):
    from pathreasoner_jax.pod.buffers import report_path
    dump = tiny[4]
    for stage, part in (("sft", "sft_step"), ("grpo", "grpo_update"), ("rollout", "rollout")):
        folder = os.path.join(dump, stage, part)
        assert any(f.endswith("after_optimizations.txt") for f in os.listdir(folder)), folder
        assert report_path(folder)
    top = tiny[3]["stages"]["sft"]["parts"][0]["largest_allocations"]
    assert top and all(a["bytes"] > 0 for a in top)
    assert [a["bytes"] for a in top] == sorted((a["bytes"] for a in top), reverse=True)


@needs_libtpu
def test_sft_flops_match_the_analytic_count(tiny):
    part = tiny[3]["stages"]["sft"]["parts"][0]
    assert 0.9 <= part["xla_flops"] / part["analytic_flops"] <= 1.1


@needs_libtpu
@pytest.mark.slow
def test_plan_ranks_a_bad_mesh_below_a_good_one(tiny):
    from pathreasoner_jax.pod.cli import plan
    cfg, sl, devices, _, _ = tiny
    # tensor=4 all-reduces every layer's activations (32 rows × 256 tokens × 512) where
    # FSDP gathers ~3 MB of weights: more ICI traffic for the same work
    rows = plan(cfg, sl, "sft", meshes=[(1, 1, 4), (1, 4, 1)], progress=False, devices=devices)
    assert [r["mesh"]["tensor"] for r in rows] == [1, 4]
    assert all(r["fits"] for r in rows) and rows[0]["step_time_s"] < rows[1]["step_time_s"]


@needs_libtpu
@pytest.mark.slow
def test_layer_extrapolation_matches_a_direct_compile(tiny):
    import dataclasses
    from pathreasoner_jax.pod.cli import compile_config
    cfg, sl, devices, _, _ = tiny
    three = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, llm=dataclasses.replace(cfg.model.llm, num_layers=3)))
    direct = compile_config(three, sl, ("sft",), devices, log=lambda *_: None)["stages"]["sft"]["parts"][0]
    fit = compile_config(three, sl, ("sft",), devices, log=lambda *_: None,
                         layers_fit=(1, 2))["stages"]["sft"]["parts"][0]
    # parameters and optimizer state grow by one identical layer each: exact
    assert fit["memory"]["arguments"] == direct["memory"]["arguments"]
    for key in ("xla_flops", "ici_bytes"):
        assert fit[key] == pytest.approx(direct[key], rel=0.05), key
    # XLA's bytes-accessed estimate follows its fusion choices, which shift with the layer
    # count: extrapolated from 1 and 2 layers it came out 6.6% below the direct 3-layer figure
    assert fit["bytes_accessed"] == pytest.approx(direct["bytes_accessed"], rel=0.1)
    assert fit["memory"]["peak"] == pytest.approx(direct["memory"]["peak"], rel=0.1)


def test_extrapolated_temporaries_take_the_smaller_of_the_two_compiles():
    """XLA's heap packing can inflate one compile (0.5B at 4608 tokens: 3.94 / 6.33 GiB at
    1 / 2 layers, 7.21 at 24); each compile + the layers' residual bounds the L-layer heap
    from above, so the smaller bound is used (pod/analysis.extrapolate_part)."""
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.models.factory import resolve_model_config
    from pathreasoner_jax.pod.analysis import extrapolate_part, layer_residual_bytes
    cfg = load_config(os.path.join(HERE, "pod_tiny.yaml"))
    mc = resolve_model_config(cfg.model)
    shapes = {"batch": 32, "grad_accum": 1, "seq_len": 256, "patches": 128}
    mesh = {"data": 1, "fsdp": 4, "tensor": 1}
    # remat off: one more layer keeps its whole working set (memory.py), rows 32 / 4 = 8, fp32
    layer = 4 * 8 * 256 * (4 * 512 + 2 * 4 * 128 + 2 * 2 * 128 + 3 * 512) + (4 + 2 * 4) * 8 * 4 * 256 * 256
    assert layer_residual_bytes("sft_step", shapes, mc, mesh) == layer
    assert layer_residual_bytes("grpo_logprobs", shapes, mc, mesh) == 0.0

    def part(temps, args):
        return {"name": "sft_step", "calls_per_step": 1.0, "shapes": shapes, "compile_s": 1.0,
                "memory": {"arguments": args, "outputs": 0.0, "aliased": 0.0, "temporaries": temps,
                           "generated_code": args / 2, "peak": args + temps},
                "xla_flops": 1e9, "bytes_accessed": 1e9, "ici_bytes": 0.0, "collectives": {}}
    sl = T.parse_slice("v5e-4")
    inflated = extrapolate_part(part(1e9, 10.0), part(5e9, 20.0), 1, 2, 6, cfg, mc, sl, mesh)
    assert inflated["memory"]["temporaries"] == 1e9 + 5 * layer  # from the 1-layer compile
    assert inflated["memory"]["arguments"] == 60.0  # arguments stay linear: 10 + 10·(6 − 1)
    # identical layers share their code: the larger compile's, not a line through both
    assert inflated["memory"]["generated_code"] == 10.0
    assert inflated["memory"]["peak"] == 60.0 + 1e9 + 5 * layer + 10.0
    shrunk = extrapolate_part(part(5e9, 10.0), part(1e9, 20.0), 1, 2, 6, cfg, mc, sl, mesh)
    assert shrunk["memory"]["temporaries"] == 1e9 + 4 * layer
