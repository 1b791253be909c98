"""Prints the slide file of the first test-split sample of the demo corpus (for `infer`)."""
from __future__ import annotations

import argparse
import glob
import os

from pathreasoner_jax.config import load_config
from pathreasoner_jax.data.store import SampleSource
from pathreasoner_jax.run_layout import RunLayout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    sample = SampleSource(RunLayout(cfg).prep_dir, "test")[0]
    seed = cfg.data.demo_seed if cfg.data.demo_seed >= 0 else cfg.run.seed
    corpus = os.path.join(cfg.data.cache_dir, f"corpus-s{seed}-n{cfg.data.demo_num_slides}")
    hits = glob.glob(os.path.join(corpus, "slides", sample.slide_id + ".*"))
    if not hits:
        raise SystemExit(f"slide file of {sample.slide_id} not found under {cfg.data.cache_dir}")
    print(hits[0])


if __name__ == "__main__":
    main()
