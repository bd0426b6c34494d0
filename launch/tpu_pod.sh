#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice: the same command on every worker.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh --workdir=gs://b/dllm \
#       --config.model.preset=llada_1b --config.model.dtype=bfloat16
#   DRY_RUN=1 TPU_NAME=my-v5p-64 NUM_WORKERS=8 bash launch/tpu_pod.sh --workdir=gs://b/dllm
#
# jax.distributed.initialize() configures itself on TPU VMs; launch.train calls
# it. Mesh default: FSDP over every chip of the slice (override with
# --config.mesh.*; for several slices add --config.mesh.dcn_data=SLICES).
# REPO_DIR is the checkout on the workers (same path on each).
# DRY_RUN=1 prints the gcloud command and each worker's command.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
ZONE="${ZONE:-us-central2-b}"
NUM_WORKERS="${NUM_WORKERS:-1}"
REPO_DIR="${REPO_DIR:-~/dllm_jax}"
PYTHON="${PYTHON:-python3}"

ARGS="--config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1"
for a in "$@"; do ARGS+=" $(printf '%q' "$a")"; done
REMOTE="cd $REPO_DIR && $PYTHON -m launch.train $ARGS"
GCLOUD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all
        --command="$REMOTE")

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "dry run: ${GCLOUD[*]}"
  for ((i = 0; i < NUM_WORKERS; i++)); do
    echo "[$TPU_NAME worker $i] TPU_WORKER_ID=$i: $REMOTE"
  done
  exit 0
fi
exec "${GCLOUD[@]}"
