#!/usr/bin/env bash
# One machine, all its local accelerators (or CPU): installs into .venv if needed, then runs
# one pathreasoner command. The mesh comes from the config (mesh.fsdp=-1: every local device).
#   bash launch/local.sh sft --config configs/qwen2_5_1_5b.yaml
#   ACCEL=cuda12 bash launch/local.sh bench sft --config configs/qwen2_5_1_5b.yaml --baseline torch
# ACCEL: cpu (default) | cuda12 | tpu — which jax wheel to add on top of requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ACCEL=${ACCEL:-cpu}
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=.venv/.installed-$ACCEL-$(cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements-dev.txt
  case "$ACCEL" in
    cuda12) .venv/bin/pip install -q -U "jax[cuda12]" ;;
    tpu) .venv/bin/pip install -q -U "jax[tpu]" ;;
    cpu) ;;
    *) echo "launch/local.sh: unknown ACCEL=$ACCEL (cpu | cuda12 | tpu)" >&2; exit 2 ;;
  esac
  .venv/bin/pip install -q --no-deps -e .
  touch "$stamp"
fi
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/pathreasoner "$@"
