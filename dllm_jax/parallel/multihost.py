"""Many hosts: starting `jax.distributed`, and global batches from per-host data.

Each JAX process reads its own shard of the data (`pipeline.*_dataset(...,
shard_index=jax.process_index(), shard_count=jax.process_count())`); the
per-process batches become one global `jax.Array` with
`jax.make_array_from_process_local_data`, its leading (batch) axis sharded
over the data-parallel mesh axes.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np

# Environment variables that say "this is one of several processes".
_CLUSTER_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES',
                'MEGASCALE_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_ADDRESS')


def maybe_initialize() -> bool:
  """Calls `jax.distributed.initialize()` when the environment describes a
  multi-process job (SLURM, Open MPI, TPU VM pods, or JAX_COORDINATOR_ADDRESS
  with JAX_NUM_PROCESSES / JAX_PROCESS_ID); JAX reads the rest from there.
  Returns whether it initialized. Call it before any other JAX call."""
  if os.environ.get('SLURM_NTASKS', '1') == '1' and not any(
      os.environ.get(v) for v in _CLUSTER_ENV[1:]):
    return False
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  else:
    jax.distributed.initialize()  # Cluster auto-detection (SLURM, TPU, MPI).
  return True


def global_batch(local: Mapping[str, np.ndarray],
                 sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Per-process arrays [B / P, ...] -> global arrays [B, ...] on `sharding`
  (a NamedSharding whose spec shards the leading axis over the data axes).
  Process p's rows are global rows p * B/P ... (p + 1) * B/P - 1."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
