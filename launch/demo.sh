#!/usr/bin/env bash
# The whole PathReasoner pipeline on the embedded demo (configs/demo.yaml), on CPU:
#   prepare → sft → prior → sft (pseudo-bag masking) → grpo → eval → infer
# Everything lands under runs/demo/. A killed run resumes from its last checkpoint when
# started again; a finished run is a quick no-op unless --force is given.
# Extra key=value arguments override the config for every stage (e.g. sft.epochs=2).
# --clip runs Patho-CLIP instead (configs/clip_demo.yaml, a few minutes):
#   clip-data → clip-eval of the untrained model (chance) → clip → clip-eval
# --patho-r1 runs Patho-R1's recipe on images (configs/patho_r1_demo.yaml, a few minutes):
#   vl-data → vl-init → vl-eval → vl-train pretrain / sft / grpo, each with vl-eval
set -euo pipefail
cd "$(dirname "$0")/.."
FORCE=""
CLIP=""
PATHO_R1=""
OVERRIDES=()
for a in "$@"; do
  case "$a" in
    --force) FORCE="--force" ;;
    --clip) CLIP=1 ;;
    --patho-r1) PATHO_R1=1 ;;
    *) OVERRIDES+=("$a") ;;
  esac
done
source launch/_venv.sh
ensure_venv requirements.txt
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
CFG=configs/demo.yaml
[ -n "$CLIP" ] && CFG=configs/clip_demo.yaml
[ -n "$PATHO_R1" ] && CFG=configs/patho_r1_demo.yaml
PR=(.venv/bin/python -m pathreasoner_jax)
RUN=$(.venv/bin/python -c "import sys; from pathreasoner_jax.config import load_config; print(load_config('$CFG', sys.argv[1:]).run_dir)" "${OVERRIDES[@]}")
mkdir -p "$RUN"
LOG="$RUN/demo.log"
[ -n "$FORCE" ] && rm -rf "$RUN/eval" "$RUN/infer" "$RUN/prior.npz"
T0=$SECONDS

stage() {  # stage NAME OUTPUT -- command...
  local name=$1 out=$2; shift 3
  local t=$SECONDS
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[demo] $name FAILED after $((SECONDS - t))s — see $LOG" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  printf '[demo] %-22s %4ds  → %s\n' "$name" $((SECONDS - t)) "$out"
}

echo "[demo] run directory $RUN (log: $LOG)"
if [ -n "$CLIP" ]; then
  source launch/clip_demo.sh
  exit 0
fi
if [ -n "$PATHO_R1" ]; then
  source launch/patho_r1_demo.sh
  exit 0
fi
stage prepare "$RUN/prep" -- "${PR[@]}" prepare --config $CFG $FORCE "${OVERRIDES[@]}"
stage sft "$RUN/checkpoints/sft" -- "${PR[@]}" sft --config $CFG $FORCE run.progress=false "${OVERRIDES[@]}"
if [ -n "$FORCE" ] || [ ! -f "$RUN/prior.npz" ]; then
  stage prior "$RUN/prior.npz" -- "${PR[@]}" prior --config $CFG --force run.progress=false "${OVERRIDES[@]}"
else
  printf '[demo] %-22s %4ds  → %s\n' prior 0 "$RUN/prior.npz (done)"
fi
stage "sft (pseudo-bag)" "$RUN/checkpoints/sft_pseudobag" -- "${PR[@]}" sft --config $CFG $FORCE \
  sft.pseudo_bag=true sft.epochs=4 run.progress=false "${OVERRIDES[@]}"
stage grpo "$RUN/checkpoints/grpo" -- "${PR[@]}" grpo --config $CFG $FORCE run.progress=false "${OVERRIDES[@]}"
if [ -n "$FORCE" ] || [ ! -f "$RUN/eval/metrics.json" ] || [ "$RUN/checkpoints/grpo/DONE" -nt "$RUN/eval/metrics.json" ]; then
  stage eval "$RUN/eval/metrics.json" -- "${PR[@]}" eval --config $CFG run.progress=false "${OVERRIDES[@]}"
else
  printf '[demo] %-22s %4ds  → %s\n' eval 0 "$RUN/eval/metrics.json (done)"
fi
SLIDE=$(.venv/bin/python -m data_prep.demo.pick_slide --config $CFG "${OVERRIDES[@]}")
if [ -n "$FORCE" ] || [ ! -f "$RUN/infer/report.html" ] || [ "$RUN/eval/metrics.json" -nt "$RUN/infer/report.html" ]; then
  stage infer "$RUN/infer/report.html" -- "${PR[@]}" infer --config $CFG --slide "$SLIDE" \
    --question "What is the diagnosis of this whole slide image?" --out "$RUN/infer" run.progress=false "${OVERRIDES[@]}"
else
  printf '[demo] %-22s %4ds  → %s\n' infer 0 "$RUN/infer/report.html (done)"
fi
echo
.venv/bin/python -m pathreasoner_jax.eval.summary "$RUN/eval/metrics.json"
echo
echo "[demo] finished in $((SECONDS - T0))s; report: $RUN/infer/report.html"
