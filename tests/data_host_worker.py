"""One of two JAX processes on loopback reading its shard of a JSONL source and
assembling the global batch (run by tests/test_multihost.py):

  python -m tests.data_host_worker ID PORT SOURCE_SPEC
Prints one JSON line: this process's local doc ids and the global batch's."""

import json
import sys

import jax
import numpy as np


def main():
  pid, port, spec = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', 2)
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=2, process_id=pid)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from dllm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from dllm_jax.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  from dllm_jax.parallel import multihost  # pylint: disable=g-import-not-at-top
  tok = ByteTokenizer()

  def doc_ids(tokens):
    return [int(tok.decode(row)[4:8]) for row in np.asarray(tokens)]

  it = iter(pipeline.pretrain_dataset(
      spec, tok, seq_len=96, batch_size=2, seed=0, packing='first_fit',
      shard_index=jax.process_index(), shard_count=jax.process_count()))
  mesh = jax.make_mesh((4,), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('data'))
  out = {'local': [], 'global': []}
  for _ in range(3):
    local = next(it)
    batch = multihost.global_batch(local, sharding)
    assert batch['tokens'].shape == (4, 96), batch['tokens'].shape
    out['local'].append(doc_ids(local['tokens']))
    out['global'].append(doc_ids(multihost_utils.process_allgather(batch['tokens'],
                                                                   tiled=True)))
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
