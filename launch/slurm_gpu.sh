#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all of its GPUs.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh --workdir=/shared/dllm \
#       --config.model.preset=llada_1b --config.model.dtype=bfloat16
#   DRY_RUN=1 NODES=4 GPUS_PER_NODE=8 bash launch/slurm_gpu.sh --workdir=/shared/dllm
#
# jax.distributed.initialize() reads the SLURM environment (coordinator = first
# node, process id = SLURM_PROCID); launch.train calls it. Mesh: the data axis
# across nodes (data-centre network, dcn_data = nodes), FSDP within a node.
# Override with --config.mesh.*. The workdir must be on a shared filesystem.
# DRY_RUN=1 prints the per-node commands instead of running srun.
#SBATCH --job-name=dllm_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

NODES="${SLURM_JOB_NUM_NODES:-${NODES:-1}}"
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-${GPUS_PER_NODE:-8}}"
PYTHON="${PYTHON:-python}"
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

CMD=("$PYTHON" -m launch.train
     "--config.mesh.dcn_data=$NODES" "--config.mesh.data=$NODES"
     "--config.mesh.fsdp=-1" "--config.mesh.tensor=1" "$@")

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  HOSTS=()
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null; then
    mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  fi
  echo "dry run: $NODES node(s) x $GPUS_PER_NODE GPU(s), $((NODES * GPUS_PER_NODE)) devices"
  for ((i = 0; i < NODES; i++)); do
    host="${HOSTS[$i]:-node$i}"
    echo "[$host] SLURM_PROCID=$i SLURM_NTASKS=$NODES JAX coordinator ${HOSTS[0]:-node0}: ${CMD[*]}"
  done
  exit 0
fi

export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${CMD[@]}"
