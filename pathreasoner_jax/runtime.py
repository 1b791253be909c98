"""What every stage needs first: the run layout, tokenizer, special ids, resolved model
config, mesh — and the model built (optionally from a checkpoint) in its shardings."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pathreasoner_jax import distributed
from pathreasoner_jax.config import Config, ModelConfig
from pathreasoner_jax.run_layout import RunLayout
from pathreasoner_jax.tokenizer import SpecialIds, load_tokenizer, special_ids

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    cfg: Config
    tokenizer: object
    ids: SpecialIds
    model_cfg: ModelConfig
    mesh: object

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.cfg)

    def build_model(self, seed: int | None = None):
        from pathreasoner_jax.models.factory import create_model
        from pathreasoner_jax.sharding import use_mesh
        with use_mesh(self.mesh):
            return create_model(self.model_cfg, self.ids.image, self.mesh,
                                self.cfg.run.seed if seed is None else seed)


def setup(cfg: Config) -> Runtime:
    distributed.initialize(cfg.mesh)
    from pathreasoner_jax.models.factory import resolve_model_config
    from pathreasoner_jax.sharding import mesh_from_config

    tdir = RunLayout(cfg).tokenizer_dir
    if not os.path.isdir(tdir):
        raise FileNotFoundError(f"{tdir}: tokenizer directory does not exist (run `pathreasoner prepare` "
                                f"first, or set model.tokenizer_path)")
    tok = load_tokenizer(tdir)
    cfg = whole_slide_sample_num(cfg)
    model_cfg = resolve_model_config(cfg.model, vocab_size=len(tok))
    return Runtime(cfg, tok, special_ids(tok), model_cfg, mesh_from_config(cfg.mesh))


def whole_slide_sample_num(cfg: Config) -> Config:
    """`data.sample_num: 0` (whole slides) → the patch bucket (a power of two) of the
    prepared corpus's largest slide, so every slide is kept whole and the compiled shapes
    stay the few power-of-two patch buckets up to it."""
    if cfg.data.sample_num:
        return cfg
    import dataclasses
    import json
    from pathreasoner_jax.data.encode import patch_bucket
    path = os.path.join(RunLayout(cfg).prep_dir, "manifest.json")
    try:
        with open(path) as f:
            largest = max((s.get("num_patches", 0) for s in json.load(f).get("slides", [])), default=0)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{path}: data.sample_num=0 (whole slides) reads the largest slide's patch count "
                                f"from the prepared corpus's manifest, which could not be read ({e})") from None
    if largest <= 0:
        raise ValueError(f"{path}: data.sample_num=0 needs the slides' patch counts, and the manifest lists none")
    whole = patch_bucket(largest, 1 << 62)
    log.info("data.sample_num=0: whole slides, up to %d patches (largest slide: %d)", whole, largest)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sample_num=whole))
