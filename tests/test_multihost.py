"""Two JAX processes on loopback: disjoint data shards, one global batch."""

import json
import shutil
import subprocess
import sys

from tests.support import (REPO, SMALL_CLI, free_port as _free_port, gloo_timed_out,
                           start_processes, wait_processes)


def _run_two(module, *args, timeout=240, attempts=2):
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
  if (attempts > 1 and any(p.returncode for p in procs)
      and gloo_timed_out([err for _, err in outs])):
    return _run_two(module, *args, timeout=timeout, attempts=attempts - 1)
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


def test_launch_train_on_two_processes_restores_on_one_device(tmp_path):
  """`launch.train` across 2 processes x 4 CPU devices (mesh data 2 x fsdp 2 x
  tensor 2), one checkpoint; a single-device restore has identical parameters
  (the exact fingerprint both training processes print). The mesh is hybrid:
  its data axis spans the processes, as across the nodes of a SLURM job."""
  import re
  from dllm_jax.training import checkpoint
  cmd = [sys.executable, '-m', 'launch.train', f'--workdir={tmp_path}', *SMALL_CLI,
         '--config.train.steps=4', '--config.train.batch_size=8',
         '--config.train.log_every=2', '--config.train.checkpoint_every=4',
         '--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2',
         '--config.mesh.dcn_data=2',  # Hybrid: data across the 2 processes.
         '--config.sample.num_samples=0']  # Parameters are checked, not samples.
  procs = start_processes(cmd)
  outs = wait_processes(procs)
  if any(p.returncode for p in procs) and gloo_timed_out(outs):  # Once more, anew.
    shutil.rmtree(tmp_path)
    procs = start_processes(cmd)
    outs = wait_processes(procs)
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "mesh: {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 cpu device(s) in 2 " \
         'process(es)' in outs[0], outs[0][-3000:]
  prints = [re.search(r'final parameters: fingerprint (\w+)', o).group(1) for o in outs]
  assert prints[0] == prints[1]
  meta = checkpoint.read_meta(str(tmp_path))
  assert meta['step'] == 4 and meta['mesh']['process_count'] == 2
  restored = checkpoint.restore_for_inference(str(tmp_path))  # One device, here.
  assert checkpoint.fingerprint(restored.params) == prints[0]


def test_cluster_launch_scripts_dry_run_print_per_host_commands():
  import os
  env = {**os.environ, 'DRY_RUN': '1', 'NODES': '3', 'GPUS_PER_NODE': '8'}
  env.pop('SLURM_JOB_NUM_NODES', None)
  r = subprocess.run(['bash', 'launch/slurm_gpu.sh', '--workdir=/shared/run',
                      '--config.model.preset=llada_1b'], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[0] == 'dry run: 3 node(s) x 8 GPU(s), 24 devices'
  assert len(lines) == 4
  for i, line in enumerate(lines[1:]):
    assert line.startswith(f'[node{i}] SLURM_PROCID={i} SLURM_NTASKS=3'), line
    assert line.endswith('python -m launch.train --config.mesh.dcn_data=3 '
                         '--config.mesh.data=3 --config.mesh.fsdp=-1 '
                         '--config.mesh.tensor=1 --workdir=/shared/run '
                         '--config.model.preset=llada_1b'), line
  env = {**os.environ, 'DRY_RUN': '1', 'TPU_NAME': 'pod', 'NUM_WORKERS': '4'}
  r = subprocess.run(['bash', 'launch/tpu_pod.sh', '--workdir=gs://b/run',
                      '--config.sample.prompt=def f'], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[0].startswith('dry run: gcloud compute tpus tpu-vm ssh pod ')
  assert '--worker=all' in lines[0] and len(lines) == 5
  for i, line in enumerate(lines[1:]):
    assert line.startswith(f'[pod worker {i}] TPU_WORKER_ID={i}: cd ~/dllm_jax && '
                           'python3 -m launch.train --config.mesh.data=1 '
                           '--config.mesh.fsdp=-1'), line
    assert line.endswith(r'--workdir=gs://b/run --config.sample.prompt=def\ f'), line
  r = subprocess.run(['bash', 'launch/tpu_pod.sh'], cwd=REPO, capture_output=True,
                     text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                 if k != 'TPU_NAME'})
  assert r.returncode != 0 and 'TPU_NAME' in r.stderr
