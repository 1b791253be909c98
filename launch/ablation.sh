#!/usr/bin/env bash
# Reward and trajectory-masking ablations on the harder demo task (configs/ablation.yaml):
#   prepare → 12 SFT runs (no masking / loss / drop / loss + pseudo-bag × 3 seeds)
#           → 12 GRPO runs from one SFT checkpoint ((a) format, (b) + semantic, (c) + entity,
#             (d) (c) without KL × 3 seeds) → greedy evaluation of every policy, true and
#             shuffled slides → tables with 95% bootstrap intervals, JSON + plot under
#             benchmarks/results/ (about an hour on a 2-core CPU; a killed run resumes).
# Options go to `pathreasoner ablate` (--seeds 0,1,2 --parts sft,grpo); key=value overrides
# go to every stage. Then: python -m pathreasoner_jax ablate --render <results.json> (README).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv requirements.txt
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pathreasoner_jax ablate --config configs/ablation.yaml "$@"
