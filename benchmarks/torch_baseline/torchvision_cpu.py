"""torchvision next to the CPU torch: PyPI's torchvision wheels are CUDA builds.

With the CPU torch (our pin) their C++ ops library cannot load, and importing torchvision
then fails ("operator torchvision::nms does not exist"). transformers imports torchvision
whenever it is installed (image processors, CLIPModel), and open_clip imports it for its
image transforms; neither calls its ops here. `ensure_torchvision_importable()` declares
the op schemas the import needs when the library cannot load (calling them raises); with
a working torchvision (a CUDA machine, or pytorch.org's CPU wheel) it does nothing.
tests/conftest.py calls it before any test imports transformers.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

_TV_FALLBACK_LIB = None  # kept alive: dropping a torch.library.Library unregisters its ops


def ensure_torchvision_importable() -> None:
    """Makes `import torchvision` work with the CPU torch (see the module docstring)."""
    global _TV_FALLBACK_LIB
    if "torchvision" in sys.modules or _TV_FALLBACK_LIB is not None:
        return
    spec = importlib.util.find_spec("torchvision")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("torch") is None:
        return
    import torch
    for lib_path in glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")):
        try:
            torch.ops.load_library(lib_path)  # what torchvision does itself; loading twice is a no-op
            return
        except OSError:
            break
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_FALLBACK_LIB = lib


