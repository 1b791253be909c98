"""The patch encoder for data preparation, built on first use (slides that are already
done need no encoder, so a rerun of a finished `prepare` never loads weights)."""
from __future__ import annotations

from typing import Callable


def lazy_encoder(name: str, weights: str) -> Callable[[], object]:
    """→ `get()`: the `pathreasoner_jax.slides.encoders.build_encoder(name, weights)` encoder, built once."""
    holder = {}

    def get():
        if "enc" not in holder:
            from pathreasoner_jax.slides.encoders import build_encoder
            holder["enc"] = build_encoder(name, weights)
        return holder["enc"]
    return get
