"""Test set-up: CPU with 8 fake devices (set before JAX is imported)."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

# transformers imports torchvision whenever it is installed; PyPI's is a CUDA build whose
# ops cannot load beside the CPU torch (benchmarks/torch_baseline/torchvision_cpu.py)
from benchmarks.torch_baseline.torchvision_cpu import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()


def pytest_configure(config):
    """One JAX compilation cache per test run, shared by the xdist workers (they inherit the
    environment) and removed at the end: many tests compile the same tiny model's init and
    steps. Per run, so the suite's time on a fresh machine is what CI sees."""
    if hasattr(config, "workerinput") or os.environ.get("PATHREASONER_TEST_JAX_CACHE"):
        _use_jax_cache(os.environ.get("PATHREASONER_TEST_JAX_CACHE"))
        return
    import tempfile
    path = tempfile.mkdtemp(prefix="pathreasoner-jax-cache-")
    os.environ["PATHREASONER_TEST_JAX_CACHE"] = path
    config._jax_cache_dir = path
    _use_jax_cache(path)


def pytest_unconfigure(config):
    path = getattr(config, "_jax_cache_dir", None)
    if path:
        import shutil
        shutil.rmtree(path, ignore_errors=True)


def _use_jax_cache(path):
    if not path:
        return
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


@pytest.fixture
def shared_dir():
    if not os.path.isdir(SHARED):
        pytest.skip("../shared is absent (a user's clone has none); this test reads the reference format there")
    return os.path.abspath(SHARED)
