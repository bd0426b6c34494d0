"""Two JAX processes on loopback: disjoint data shards, one global batch."""

import json
import subprocess
import sys

from tests.test_crash_safety import _free_port
from tests.test_training import REPO


def _run_two(module, *args, timeout=240):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, '-m', module, str(i), str(port), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outs]


def test_each_process_reads_a_disjoint_shard_into_one_global_batch(tmp_path):
  with open(tmp_path / 'docs.jsonl', 'w') as f:
    for i in range(40):
      f.write(json.dumps({'text': f'doc-{i:04d} ' + 'y' * 70}) + '\n')  # A row each.
  outs = [json.loads(o.strip().splitlines()[-1])
          for o in _run_two('tests.data_host_worker', f'jsonl:{tmp_path}/docs.jsonl')]
  local0 = {d for b in outs[0]['local'] for d in b}
  local1 = {d for b in outs[1]['local'] for d in b}
  assert len(local0) == len(local1) == 6
  assert not local0 & local1  # Disjoint shards ...
  assert all(d % 2 == 0 for d in local0) and all(d % 2 == 1 for d in local1)
  for step in range(3):  # ... assembled in process order into the global batch.
    want = outs[0]['local'][step] + outs[1]['local'][step]
    assert outs[0]['global'][step] == outs[1]['global'][step] == want
