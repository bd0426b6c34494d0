"""Elastic resume on simulated CPU devices (tests/test_elastic.py starts it).

As many devices as the largest segment's mesh. One uninterrupted run on one
device, and the same run interrupted and resumed on other meshes (`stop_after` at each listed step), each segment on the first N
devices with its own data / fsdp / tensor split. Prints one JSON line: per-step
losses of both, the parameter fingerprint each segment ended with and the one
the next segment restored, the consumed batches, and (--batch_change) the error
of a resume with another global batch.

  python -m tests.elastic_worker WORKDIR '[[2, [2, 2, 2]], [4, [1, 1, 1]]]' [--batch_change]

The argument lists (stop after step, [data, fsdp, tensor]); the last stop is the
run's length. Compilations are cached on disk within WORKDIR (the one-device
program is shared by the uninterrupted run and a one-device segment).
"""

import json
import os
import sys

import jax
import numpy as np


def main(workdir, segments, check_batch_change=False):
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', max(
      int(np.prod(shape)) for _, shape in segments))
  jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  # pylint: disable=g-import-not-at-top
  from dllm_jax.parallel import mesh as mesh_lib
  from dllm_jax.training import checkpoint, trainer
  from tests.support import read_batch_log, record_training, small_config
  # pylint: enable=g-import-not-at-top

  record = record_training()
  losses, restored = record['losses'], record['restored']

  def run(path, shape, stop_after=None, **train):
    n = int(np.prod(shape))
    trainer.mesh_lib.from_config = lambda _: mesh_lib.make_mesh(
        *shape, devices=jax.devices()[:n])
    config = small_config(**{**dict(steps=steps, checkpoint_every=2, log_every=1,
                                    batch_size=8, record_batches=True), **train})
    config.sample.num_samples = 0  # No sample at the end (its compile is costly).
    state = trainer.train(config, path, stop_after=stop_after)
    return checkpoint.fingerprint(state.params)

  steps = segments[-1][0]
  out = {'full': {}, 'elastic': {}}
  full = run(os.path.join(workdir, 'full'), (1, 1, 1))
  out['full'] = {'losses': dict(losses), 'ended': full, 'batches': read_batch_log(
      os.path.join(workdir, 'full'))}
  losses.clear()
  ended = []
  for stop, shape in segments:
    ended.append(run(os.path.join(workdir, 'elastic'), shape, stop_after=stop))
  out['elastic'] = {'losses': dict(losses), 'ended': ended, 'restored': restored,
                    'batches': read_batch_log(os.path.join(workdir, 'elastic'))}
  if check_batch_change:
    try:  # Another global batch: refused before anything is restored.
      run(os.path.join(workdir, 'elastic'), (1, 1, 1), batch_size=4, steps=steps + 2)
    except ValueError as e:
      out['batch_change'] = str(e)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:] == ['--batch_change'])
