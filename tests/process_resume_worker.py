"""One JAX process of a small training run, for tests/test_elastic.py's resume
on another process count (started by `tests.support.start_processes`, or alone).

  python -m tests.process_resume_worker WORKDIR STEPS

Joins the processes the environment describes, trains `small_config` (global
batch 8, a checkpoint every 2 steps) for STEPS steps on a
data-parallel mesh over all devices (resuming WORKDIR's checkpoint if any), and
process 0 prints one line 'RESULT {json}': the exact loss of every step, the
fingerprint of the parameters each save held and of those restored, and a
digest of every step's global batch (`tests.support.record_training`).
"""

import json
import sys


def main(workdir: str, steps: int) -> None:
  # pylint: disable=g-import-not-at-top
  from dllm_jax.parallel import multihost
  multihost.maybe_initialize()
  import jax
  from dllm_jax.training import trainer
  from tests.support import record_training, small_config
  # pylint: enable=g-import-not-at-top
  record = record_training()
  config = small_config(steps=steps, checkpoint_every=2, log_every=1, batch_size=8)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = jax.device_count(), 1, 1
  config.mesh.dcn_data = jax.process_count()
  config.sample.num_samples = 0  # No sample at the end (its compile is costly).
  trainer.train(config, workdir)
  if jax.process_index() == 0:
    print('RESULT ' + json.dumps(record), flush=True)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]))
