"""`pathreasoner sft` and `pathreasoner prior`."""
from __future__ import annotations

import logging
import os

from pathreasoner_jax.config import load_config
from pathreasoner_jax.runtime import setup

log = logging.getLogger(__name__)


def run_sft(args) -> int:
    from pathreasoner_jax.sft.trainer import train_sft
    rt = setup(load_config(args.config, args.overrides))
    out = train_sft(rt, force=args.force)
    print(f"sft: checkpoints in {out}; metrics in {rt.layout.metrics_dir}")
    return 0


def run_prior(args) -> int:
    from pathreasoner_jax.checkpoint import restore_params
    from pathreasoner_jax.data.encode import ExampleEncoder
    from pathreasoner_jax.data.store import SampleSource, SlideStore, load_entities
    from pathreasoner_jax.eval.entities import EntityLexicon
    from pathreasoner_jax.sft.prior import compute_prior_cache

    rt = setup(load_config(args.config, args.overrides))
    layout = rt.layout
    out = layout.prior_path
    if os.path.exists(out) and not args.force:
        print(f"prior: {out} exists (use --force to recompute)")
        return 0
    model = rt.build_model()
    ckpt = layout.prior_model()
    restore_params(ckpt, model)
    cfg = rt.cfg
    encoder = ExampleEncoder(rt.tokenizer, rt.ids.image, cfg.data.sample_num)
    lexicon = EntityLexicon(load_entities(layout.prep_dir)["entities"])
    meta = compute_prior_cache(model, encoder, SampleSource(layout.prep_dir, "train"), SlideStore(layout.prep_dir), lexicon,
                               cfg.sft, cfg.data.num_clusters, cfg.data.length_buckets, rt.ids.pad, out,
                               progress=cfg.run.progress)
    print(f"prior: {meta['slides']} slides → {out}")
    return 0
