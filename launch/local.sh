#!/usr/bin/env bash
# One machine, all its local accelerators (or CPU): installs into .venv if needed, then runs
# one pathreasoner command. The mesh comes from the config (mesh.fsdp=-1: every local device).
#   bash launch/local.sh sft --config configs/qwen2_5_1_5b.yaml
#   ACCEL=cuda12 bash launch/local.sh bench sft --config configs/qwen2_5_1_5b.yaml --baseline torch
# ACCEL: cpu (default) | cuda12 | tpu — which jax wheel to add on top of the requirements
# (requirements-dev.txt: the torch baseline of `bench --baseline torch` included).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv requirements-dev.txt
ACCEL=${ACCEL:-cpu}
case "$ACCEL" in
  cpu) ;;
  cuda12|tpu)
    if [ ! -f ".venv/.installed-jax-$ACCEL" ]; then
      .venv/bin/pip install -q -U "jax[$ACCEL]"
      touch ".venv/.installed-jax-$ACCEL"
    fi ;;
  *) echo "launch/local.sh: unknown ACCEL=$ACCEL (cpu | cuda12 | tpu)" >&2; exit 2 ;;
esac
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/pathreasoner "$@"
