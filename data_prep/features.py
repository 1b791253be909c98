"""`pathreasoner features --slides DIR --out DIR`: one TRIDENT-style h5 per slide and a
manifest.json (slides_ok, slides_failed [{path, error}], settings).

Worker I of N takes the slides at sorted positions ≡ I (mod N) and writes
`manifest-I-of-N.json`; whichever worker finds all parts present writes the combined
`manifest.json` (an atomic write, so concurrent finishers are harmless).
"""
from __future__ import annotations

import json
import os
import sys

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.core.io import write_json
from pathreasoner_jax.slides.reader import SLIDE_EXTENSIONS, slide_id_of
from data_prep.encoder_factory import lazy_encoder
from data_prep.inputs import SlideItem, list_files
from data_prep.slide_stage import SlideSettings, features_for


def extract_folder(slides: str, out: str, encoder: str = "demo", weights: str = "", magnification: float = 20.0,
                   patch_size: int = 256, num_workers: int = 1, worker_index: int = 0,
                   default_magnification: float = 20.0, num_clusters: int = 8, force: bool = False) -> int:
    n = max(1, num_workers)
    if not 0 <= worker_index < n:
        raise UserError(f"--worker-index {worker_index} must be in [0, {n})")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: --out exists and is not a folder")
    paths = list_files(slides, SLIDE_EXTENSIONS)
    if not paths:
        raise UserError(f"{slides}: no slide files ({', '.join(SLIDE_EXTENSIONS)})")
    get_encoder = lazy_encoder(encoder, weights)
    if encoder != "demo":
        get_encoder()  # bad weights are a usage error: fail before touching any slide
    settings = SlideSettings(encoder=encoder, target_magnification=float(magnification), patch_size=int(patch_size),
                             default_magnification=default_magnification, num_clusters=num_clusters,
                             progress=True)
    ok, failed = [], []
    for i, p in enumerate(paths):
        if i % n != worker_index:
            continue
        try:
            ff = features_for(SlideItem(slide_id_of(p), p, "slide"), settings, get_encoder, out, force)
            ok.append({"slide_id": slide_id_of(p), "path": p, "h5": slide_id_of(p) + ".h5",
                       "num_patches": int(len(ff.features))})
        except UserError as e:
            failed.append({"path": p, "error": str(e)})
            print(f"pathreasoner features: skipped {e}", file=sys.stderr, flush=True)
    part = {"slides_ok": ok, "slides_failed": failed, "encoder": encoder, "magnification": magnification,
            "patch_size": patch_size, "num_workers": n, "worker_index": worker_index}
    if n == 1:
        write_json(os.path.join(out, "manifest.json"), part)
    else:
        write_json(os.path.join(out, f"manifest-{worker_index:05d}-of-{n:05d}.json"), part)
        _merge_if_complete(out, n)
    print(f"pathreasoner features: {len(ok)} ok, {len(failed)} failed → {out}", file=sys.stderr)
    return 0 if ok else 1


def _merge_if_complete(out: str, n: int) -> None:
    parts = [os.path.join(out, f"manifest-{i:05d}-of-{n:05d}.json") for i in range(n)]
    if not all(os.path.isfile(p) for p in parts):
        return
    loaded = []
    for p in parts:
        with open(p) as f:
            loaded.append(json.load(f))
    merged = dict(loaded[0], worker_index=-1,
                  slides_ok=sorted((s for m in loaded for s in m["slides_ok"]), key=lambda s: s["slide_id"]),
                  slides_failed=[s for m in loaded for s in m["slides_failed"]])
    write_json(os.path.join(out, "manifest.json"), merged)
