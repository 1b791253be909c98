"""Batch data preparation (SPEC §1, §4): slides → features, reports + KG → KG-grounded
reasoning trajectories → array_record shards. Imports `pathreasoner_jax` (record schema,
slide reading, patch encoders); `pathreasoner_jax` never imports this package.

Entry points: `cli.run_prepare` / `cli.prepare(cfg, ...)`, `cli.run_features` /
`features.extract_folder(...)`, `bench.bench_prep(cfg)`, `demo.fetch.fetch_cmu_small_region`.
Stages: `inputs` (what to read; the demo corpus), `slide_stage` (cached features),
`kg` / `kg_owl` (graphs), `linking`, `paths`, `trajectories` (evidence, augmentation,
quality filter), `writers` (template / OpenAI-compatible), `sample_stage` (cached
samples), `reference` (conversation JSON import), `splits`, `shards`, `entities`,
`pipeline` (worker parts and merge).
"""
