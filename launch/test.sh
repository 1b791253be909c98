#!/usr/bin/env bash
# Creates .venv if missing, installs the dev requirements, runs the test suite on CPU
# with 8 fake devices. Extra arguments go to pytest (e.g. `bash launch/test.sh -m slow`).
# The report's browser test (tests/test_report_browser.py) needs Debian's chromium: it is
# installed here when missing and apt-get can run as root (PATHREASONER_NO_CHROMIUM=1 skips
# this); a failed install is not fatal, that test then skips.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_venv.sh
ensure_venv requirements-dev.txt
if [ ! -x /usr/bin/chromium ] && [ -z "${PATHREASONER_NO_CHROMIUM:-}" ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  echo "[test] installing chromium for the report's browser test (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "[test] chromium could not be installed; tests/test_report_browser.py will skip"
fi
export JAX_PLATFORMS=cpu
# LLVM at -O0: the tiny test programs compile ~25% faster and run about as fast
export XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true ${XLA_FLAGS:-}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
# one pytest worker per core (at most 4): most tests are single-threaded compiles;
# --dist loadfile keeps a file's module fixtures in one worker
WORKERS="${PATHREASONER_TEST_WORKERS:-$(python3 -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$WORKERS" --dist loadfile "$@"
