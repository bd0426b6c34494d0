"""Elastic resume: a run checkpointed on one mesh resumes on another (8 -> 4 ->
1 simulated devices, other data / fsdp / tensor splits; 2 JAX processes -> 1 and
1 -> 2) with the parameters restored exactly, the same data order and the
uninterrupted run's losses; what cannot change (the global batch) is refused in
one line. By default: the data position moving to another process count
(shard plans, iterator states through the checkpoint handler)."""

import json
import os
import shutil
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dllm_jax.data import pipeline, shards as data_shards
from dllm_jax.tokenizers import ByteTokenizer
from dllm_jax.training import checkpoint, elastic, workdir_lock
from tests.support import SMALL_CLI, run_worker, start_processes, wait_processes


def _elastic(tmp_path, segments, *flags):
  return run_worker('tests.elastic_worker', str(tmp_path), json.dumps(segments), *flags,
                    timeout=900)


def _check(out, segments):
  full, el = out['full'], out['elastic']
  # The parameters each resumed segment restored are the saved ones, bit for bit.
  assert [r['step'] for r in el['restored']] == [s for s, _ in segments[:-1]]
  assert [r['fingerprint'] for r in el['restored']] == el['ended'][:-1]
  # Same batches in the same order, and the losses of the uninterrupted run
  # (tests/test_sharding.py's tolerance: a mesh changes only summation order).
  assert el['batches'] == full['batches'] and len(full['batches']) == segments[-1][0]
  assert sorted(el['losses']) == sorted(full['losses'])
  for step, loss in full['losses'].items():
    np.testing.assert_allclose(el['losses'][step], loss, rtol=1e-6, err_msg=step)
  if 'batch_change' in out:
    assert out['batch_change'].endswith('Differences: config.train.batch_size: 8 -> 4')


@pytest.mark.slow  # ~45 s: a run on 2 simulated devices, resumed on 1.
def test_resume_from_two_devices_on_one(tmp_path):
  segments = [[2, [1, 2, 1]], [3, [1, 1, 1]]]  # fsdp 2 -> one device.
  _check(_elastic(tmp_path, segments), segments)


@pytest.mark.slow
def test_resume_across_eight_four_and_one_devices_with_other_splits(tmp_path):
  """Also: another global batch size is refused in one line."""
  segments = [[2, [2, 2, 2]], [4, [1, 2, 2]], [6, [4, 1, 1]], [8, [1, 1, 1]]]
  out = _elastic(tmp_path, segments, '--batch_change')
  assert 'batch_change' in out
  _check(out, segments)


@pytest.mark.parametrize('batch, shards, procs, plans', [
    (8, 2, 2, [[(0, 0, 4)], [(1, 0, 4)]]),  # As many processes as shards.
    (8, 2, 1, [[(0, 0, 4), (1, 0, 4)]]),  # 2 -> 1: one process reads both.
    (8, 1, 2, [[(0, 0, 4)], [(0, 4, 8)]]),  # 1 -> 2: each keeps half of shard 0.
    (12, 2, 3, [[(0, 0, 4)], [(0, 4, 6), (1, 0, 2)], [(1, 2, 6)]]),  # Straddling.
])
def test_shard_plan_feeds_every_global_row_once_in_shard_order(batch, shards, procs,
                                                               plans):
  got = [[(p.shard, p.start, p.stop)
          for p in data_shards.shard_plan(batch, shards, i, procs)] for i in range(procs)]
  assert got == plans
  owners = [data_shards.owned_shards(data_shards.shard_plan(batch, shards, i, procs))
            for i in range(procs)]
  assert sorted(s for o in owners for s in o) == list(range(shards))  # Saved once.


def _iterators(source, shard_count, process_count, batch=4):
  make = lambda s, n, rows: pipeline.pretrain_dataset(
      source, ByteTokenizer(), seq_len=16, batch_size=rows, seed=3, shard_index=s,
      shard_count=n, num_epochs=1)  # Finite: Grain reads no further ahead.
  return [data_shards.ShardedIterator(make, batch_size=batch, process_index=i,
                                      process_count=process_count,
                                      shard_count=shard_count)
          for i in range(process_count)]


def _global(its):  # One step's global batch: the processes' rows in order.
  return np.concatenate([next(it)['tokens'] for it in its])


@pytest.mark.parametrize('was, now', [(2, 1), (1, 2)])
def test_data_position_moves_to_another_process_count(tmp_path, was, now):
  """The iterator states of a run on `was` processes, saved through the
  checkpoint handler after 2 steps, continue on `now` processes with the
  batches of the uninterrupted run (packing 'concat': a step holds a varying
  number of records)."""
  with open(tmp_path / 'docs.jsonl', 'w') as f:
    for i in range(40):
      f.write(json.dumps({'text': f'doc {i} ' + 'z' * (i % 7) * 3}) + '\n')
  source = f'jsonl:{tmp_path}/docs.jsonl'
  its = _iterators(source, was, was)
  full = [_global(its) for _ in range(5)]
  its = _iterators(source, was, was)
  for _ in range(2):
    _global(its)
  states = [it.get_state() for it in its]
  union = {'shard_count': was, 'shards': {s: v for st in states
                                          for s, v in st['shards'].items()}}
  mngr = ocp.CheckpointManager(tmp_path / 'ckpt')
  mngr.save(2, args=ocp.args.Composite(data=elastic.ShardStatesSave(union)))
  mngr.wait_until_finished()
  assert sorted(n for n in os.listdir(tmp_path / 'ckpt' / '2' / 'data')
                if n.endswith('.json')) == [
      f'shard_{s}-of-{was}.json' for s in range(was)]
  resumed = _iterators(source, now, now)
  for it in resumed:
    mngr.restore(2, args=ocp.args.Composite(data=elastic.ShardStatesRestore(it)))
    assert it.shard_count == was
  rest = [_global(resumed) for _ in range(3)]
  assert all(np.array_equal(a, b) for a, b in zip(rest, full[2:], strict=True))
  data = tmp_path / 'ckpt' / '2' / 'data'
  for s in range(was):  # Checkpoints from before shards: one state per process.
    os.rename(data / f'shard_{s}-of-{was}.json', data / f'process_{s}-of-{was}.json')
  legacy = _iterators(source, now, now)
  for it in legacy:
    mngr.restore(2, args=ocp.args.Composite(data=elastic.ShardStatesRestore(it)))
  assert np.array_equal(_global(legacy), full[2])
  assert len({a.tobytes() for a in full}) == 5


def test_an_undividable_data_position_is_refused_in_one_line():
  elastic.check_resume({'step': 4, 'mesh': {'process_count': 1}}, 8)  # This run's.
  elastic.check_resume({'step': 4}, 8)  # An older checkpoint without the record.
  elastic.check_resume({'step': 4, 'data_shards': 2, 'mesh': {'process_count': 1}}, 8)
  with pytest.raises(ValueError) as e:
    elastic.check_resume({'step': 4, 'data_shards': 4}, 6)
  assert str(e.value) == (
      'cannot continue the data order of the checkpoint (step 4) on 1 process(es): '
      'global batch 6 is not a multiple of the 4 data shard(s) the run started with; '
      'each needs an equal part of every batch.')


def _train_processes(workdir, count, steps=4):
  """tests/process_resume_worker.py on `count` processes x 1 CPU device."""
  cmd = [sys.executable, '-m', 'tests.process_resume_worker', str(workdir), str(steps)]
  procs = start_processes(cmd, count=count, devices=1)
  outs = wait_processes(procs, timeout=600)
  assert [p.returncode for p in procs] == [0] * count, outs[0][-3000:]
  result = [x for x in outs[0].splitlines() if x.startswith('RESULT ')][-1]
  return json.loads(result[len('RESULT '):]), outs[0]


@pytest.mark.slow  # ~60 s: a run on 2 processes, resumed on 1 (and 1 -> 2).
@pytest.mark.parametrize('was, now', [(2, 1), (1, 2)])
def test_resume_on_another_process_count_continues_the_run(tmp_path, was, now):
  """A run on `was` JAX processes checkpointed at step 2 resumes on `now`: the
  restored parameters are the saved ones bit for bit, steps 3 and 4 consume the
  uninterrupted run's batches and give its losses (rtol 1e-6)."""
  full, _ = _train_processes(tmp_path / 'full', was)
  shutil.copytree(tmp_path / 'full', tmp_path / 'resumed')  # Stopped after step 2:
  shutil.rmtree(checkpoint.checkpoint_dir(str(tmp_path / 'resumed')) + '/4')
  resumed, log = _train_processes(tmp_path / 'resumed', now)
  assert 'resumed from step 2' in log, log[-3000:]
  assert resumed['restored'] == [{'step': 2, 'fingerprint': full['saved']['2']}]
  # The global batches (all processes' rows; batches.txt has process 0's alone).
  assert resumed['batches'] == full['batches'][2:] and len(set(full['batches'])) == 4
  assert sorted(resumed['losses']) == ['3', '4']
  for step in ('3', '4'):
    np.testing.assert_allclose(resumed['losses'][step], full['losses'][step],
                               rtol=1e-6, err_msg=step)
  meta = checkpoint.read_meta(str(tmp_path / 'resumed'))
  assert meta['step'] == 4 and meta['mesh']['process_count'] == now
  assert meta['data_shards'] == was  # The shards outlive the process count.


@pytest.mark.slow
def test_two_process_run_holds_one_lock(tmp_path):
  """`launch.train` on 2 processes x 4 CPU devices: only process 0 holds the
  workdir lock, and releases it at the end."""
  procs = start_processes(
      [sys.executable, '-m', 'launch.train', f'--workdir={tmp_path}', *SMALL_CLI,
       '--config.train.steps=400', '--config.train.batch_size=8',
       '--config.train.log_every=1', '--config.train.checkpoint_every=400',
       '--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2',
       '--config.mesh.dcn_data=2'])
  try:
    for line in procs[0].stdout:  # Training is under way on both processes.
      if line.startswith('step 2/'):
        break
    with open(workdir_lock.lock_path(str(tmp_path))) as f:
      holder = json.load(f)
  except BaseException:
    wait_processes(procs, timeout=0)  # Ends them.
    raise
  outs = wait_processes(procs, timeout=600)
  assert holder['pid'] == procs[0].pid
  assert [p.returncode for p in procs] == [0, 0], outs
  assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))  # Released.


def test_a_data_position_without_a_read_shard_is_refused_in_one_line():
  make = lambda s, n, rows: grain.MapDataset.range(s, 64, n).map(
      lambda x: {'tokens': np.array([x])}).batch(rows).to_iter_dataset()
  it = data_shards.ShardedIterator(make, batch_size=4, process_index=0,
                                   process_count=1)
  saved = data_shards.ShardedIterator(make, batch_size=4, process_index=0,
                                      process_count=2).get_state()  # Shard 0 only.
  with pytest.raises(ValueError) as e:
    it.set_state(saved)
  assert str(e.value) == ('the data position has no state for shard(s) [1] of 2, '
                          'which this process reads; it cannot continue the same '
                          'data order.')
  it.set_state({**saved, 'shards': {**saved['shards'], 1: saved['shards'][0]}})
  assert next(it)['tokens'].ravel().tolist() == [0, 2, 1, 3]  # Shard 0's, shard 1's.
