#!/usr/bin/env bash
# A TPU VM pod slice: (optionally create it,) copy this checkout to every worker, install,
# and run the same pathreasoner command on all hosts at once. JAX finds the other hosts
# itself on TPU pods (PATHREASONER_AUTO_DISTRIBUTED=1 → jax.distributed.initialize()).
#
#   TPU_NAME=my-v5e-64 ZONE=us-west4-a bash launch/tpu_pod.sh \
#       sft --config configs/qwen2_5_7b.yaml mesh.data=1 mesh.fsdp=16 mesh.tensor=4 sft.batch_size=32
#
# Env: TPU_NAME, ZONE (required); PROJECT (gcloud default otherwise); CREATE=1 with
# ACCELERATOR_TYPE (e.g. v5litepod-64, v5p-128) and RUNTIME_VERSION (e.g. v2-alpha-tpuv5-lite)
# to create the slice first; REMOTE_DIR (default ~/pathreasoner-jax). Data and run folders
# must be on storage every host sees (e.g. a GCS FUSE mount or a shared disk): set
# data.prep_dir= and run.root= to it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR=${REMOTE_DIR:-pathreasoner-jax}
gc=(gcloud compute tpus tpu-vm)
proj=()
[ -n "${PROJECT:-}" ] && proj=(--project "$PROJECT")
if [ "${CREATE:-0}" = 1 ]; then
  "${gc[@]}" create "$TPU_NAME" --zone "$ZONE" "${proj[@]}" \
    --accelerator-type "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE}" --version "${RUNTIME_VERSION:?set RUNTIME_VERSION}"
fi
# Copy the working tree (tracked + untracked, not ignored) to every worker.
archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
git ls-files -co --exclude-standard -z | tar --null -czf "$archive" -T -
"${gc[@]}" scp "$archive" "$TPU_NAME:/tmp/pathreasoner-src.tar.gz" --zone "$ZONE" "${proj[@]}" --worker=all
args=$(printf '%q ' "$@")
remote="set -e; mkdir -p $REMOTE_DIR && tar -xzf /tmp/pathreasoner-src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
  && ACCEL=tpu PATHREASONER_AUTO_DISTRIBUTED=1 bash launch/local.sh $args"
"${gc[@]}" ssh "$TPU_NAME" --zone "$ZONE" "${proj[@]}" --worker=all --command "$remote"
