"""Small synthetic inputs for report.html (no model): a rendered H&E-like slide written as a
pyramidal TIFF, its thumbnail, a patch grid with spatial clusters and hand-set cluster drops Δ.

Geometry: level 0 is 2048 × 1536 px at MPP µm/px; patches are 128 px (a 16 × 12 grid);
the thumbnail is level 0 / DS = 256 × 192 px; clusters are 4 × 4-patch blocks (4 × 3 = 12).
"""
import os

import numpy as np
from PIL import Image

MPP, DS, PATCH = 0.5, 8.0, 128
LEVEL0 = (2048, 1536)  # (width, height)
# cluster → Δ nats: 5 supports most, 2 a little, 0 and 9 speak against, the rest ~nothing
DROPS = {0: -0.4, 1: 0.0, 2: 0.3, 3: 0.02, 4: 0.0, 5: 0.8, 6: -0.05, 7: 0.0, 8: 0.0, 9: -0.2, 10: 0.0, 11: 0.0}
NO_SUPPORT = {c: (-0.3 if c == 5 else 0.0) for c in DROPS}  # an entity the slide does not support
LEXICON = [{"name": "Adenocarcinoma", "type": "disease"},
           {"name": "Gland formation", "type": "finding", "synonyms": ["glands"]},
           {"name": "Necrosis", "type": "finding"}]
COMPLETION = ("<observe>Irregular glands & necrosis <b>here</b>.</observe>\n"
              "<think>Glands invading stroma suggest adenocarcinoma.</think>\n"
              "<answer>Adenocarcinoma</answer><|im_end|>")


def patch_grid():
    """coords (192, 2) level-0 top-left corners, cluster_ids (192,) of 4 × 4-patch blocks."""
    gy, gx = np.mgrid[0:LEVEL0[1] // PATCH, 0:LEVEL0[0] // PATCH]
    coords = np.stack([gx.ravel() * PATCH, gy.ravel() * PATCH], 1).astype(np.int64)
    clusters = (gx.ravel() // 4) + 4 * (gy.ravel() // 4)
    return coords, clusters


def level0_image(seed: int = 0) -> np.ndarray:
    """(1536, 2048, 3) uint8 synthetic adenocarcinoma-like tissue on white."""
    from data_prep.demo.synth import render

    return render("adenocarcinoma", LEVEL0, np.random.default_rng(seed), coverage=0.8)


def thumbnail_of(level0: np.ndarray) -> np.ndarray:
    """(192, 256, 3): level 0 / DS."""
    size = (int(LEVEL0[0] / DS), int(LEVEL0[1] / DS))
    return np.asarray(Image.fromarray(level0).resize(size, Image.BILINEAR))


def write_slide(path: str, level0: np.ndarray) -> str:
    """A pyramidal TIFF OpenSlide reads with mpp = MPP."""
    from data_prep.demo.synth import write_pyramid_tiff

    write_pyramid_tiff(path, level0, MPP, levels=3)
    return path


def build_report(out_dir: str, tmp_dir: str, *, from_slide: bool = True, completion: str = COMPLETION,
                 mpp=MPP, embed: bool = False, generated_at: str = "2025-01-02T03:04:05+00:00") -> str:
    """report.html for two entities (one supported, one not), crops read from a TIFF slide
    (from_slide) or enlarged from the thumbnail. Returns the report's path."""
    from pathreasoner_jax.eval.report import write_report
    from pathreasoner_jax.eval.report_images import build_entity_evidence, slide_crop_fn, thumbnail_crop_fn

    level0 = level0_image()
    thumb = thumbnail_of(level0)
    coords, clusters = patch_grid()
    slide = None
    if from_slide:
        import openslide
        slide = openslide.OpenSlide(write_slide(os.path.join(tmp_dir, "slide.tiff"), level0))
        crop_fn, source = slide_crop_fn(slide), "slide"
    else:
        crop_fn, source = thumbnail_crop_fn(thumb, DS), "thumbnail"
    try:
        evidence = {name: build_entity_evidence(thumb, coords, PATCH, clusters, drops, DS, crop_fn=crop_fn,
                                                crop_source=source, extent=LEVEL0)
                    for name, drops in (("Adenocarcinoma", DROPS), ("Necrosis", NO_SUPPORT))}
    finally:
        if slide is not None:
            slide.close()
    return write_report(out_dir, question="What is the diagnosis of this <slide> & why?\n<image>",
                        completion=completion, thumbnail=thumb, evidence=evidence, mpp=mpp, downsample=DS,
                        lexicon=LEXICON, embed_images=embed, generated_at=generated_at,
                        provenance={"model": "demo <tiny>", "slide": "synthetic.tiff"})
