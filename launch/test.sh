#!/usr/bin/env bash
# Creates .venv if missing, installs the dev requirements, runs the test suite on CPU
# with 8 fake devices. Extra arguments go to pytest (e.g. `bash launch/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv requirements-dev.txt
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
