"""One of two JAX processes on loopback polling the PreemptionWatcher each step
(run by tests/test_crash_safety.py): python -m tests.preemption_worker ID PORT."""

import sys
import time

import jax


def main():
  pid, port = int(sys.argv[1]), sys.argv[2]
  jax.config.update('jax_platforms', 'cpu')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=2, process_id=pid)
  from dllm_jax.training.preemption import PreemptionWatcher  # pylint: disable=g-import-not-at-top
  watcher = PreemptionWatcher()
  print(f'ready {pid}', flush=True)
  for step in range(1, 1_000_000):
    time.sleep(0.005)  # A "train step".
    if watcher.should_stop(step):
      print(f'stopped at step {step} by {watcher.signal_name}', flush=True)
      return
  print('never stopped', flush=True)


if __name__ == '__main__':
  main()
