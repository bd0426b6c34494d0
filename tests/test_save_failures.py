"""Full or read-only disks: a failed checkpoint save ends the run in one line
naming the path, and the checkpoints already there stay restorable; retention
(keep the last N and every K-th)."""

import errno
import os
import subprocess
import sys
import time
import types

import grain
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity

from dllm_jax import errors
from dllm_jax.training import checkpoint, trainer
from tests.support import REPO, SMALL_CLI, small_config


def _fail_step(monkeypatch, step, err=errno.ENOSPC):
  """Makes the commit (final rename, in Orbax's background thread) of `step` fail
  as a full disk would."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def failing(self):
    if os.path.basename(str(self.get())).startswith(f'{step}.orbax-checkpoint-tmp'):
      raise OSError(err, os.strerror(err), str(self.get()))
    return await finalize(self)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', failing)


def _tiny_state(value):
  return types.SimpleNamespace(step=np.int32(value),
                               params={'w': np.full((4,), value, np.float32)},
                               opt_state={'m': np.zeros((4,), np.float32)},
                               guard={'skipped': np.int32(0)})


def _save(mngr, step):
  checkpoint.save_state(mngr, _tiny_state(step), None, {})


def test_async_save_failure_surfaces_names_the_path_and_keeps_older_steps(
    tmp_path, monkeypatch):
  mngr = checkpoint.make_manager(str(tmp_path))
  _save(mngr, 1)
  _fail_step(monkeypatch, 2)
  _save(mngr, 2)  # Fails in the background ...
  with pytest.raises(errors.CheckpointSaveError) as e:
    mngr.wait_until_finished()  # ... and surfaces here, once.
  path = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), '2')
  assert str(e.value).startswith(f'cannot write checkpoint step 2 to {path} (No '
                                 'space left on device: ')
  assert 'steps 1) stay restorable' in str(e.value) and '\n' not in str(e.value)
  mngr.wait_until_finished()  # Already reported: quiet (a `finally` can call it).
  with pytest.raises(errors.CheckpointSaveError):
    _save(mngr, 3)  # No further saves into a failing disk.
  fresh = checkpoint.make_manager(str(tmp_path))  # The next run's view.
  assert fresh.all_steps() == [1] and fresh.latest_step() == 1
  monkeypatch.undo()
  _save(fresh, 2)  # Step 2 can be written again; the partial folder is gone.
  fresh.wait_until_finished()
  assert sorted(os.listdir(fresh.directory)) == ['1', '2']


def test_sync_save_failure_names_the_step_and_path(tmp_path, monkeypatch):
  def denied(self, directory, *args, **kwargs):
    raise PermissionError(errno.EACCES, 'Permission denied', str(directory))
  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, 'save', denied)
  mngr = checkpoint.make_manager(str(tmp_path), async_save=False)
  _save(mngr, 1)  # No data iterator: the grain handler is not used.
  state = _tiny_state(2)
  it = iter(grain.MapDataset.range(4).to_iter_dataset())
  with pytest.raises(errors.CheckpointSaveError,
                     match=r'cannot write checkpoint step 2 to .*checkpoints/2 '
                     r'\(Permission denied: .*\); the run stops; the checkpoints '
                     r'already there \(steps 1\) stay restorable'):
    checkpoint.save_state(mngr, state, it, {})
  assert checkpoint.make_manager(str(tmp_path)).all_steps() == [1]


def test_retention_keeps_the_last_n_and_every_kth(tmp_path):
  mngr = checkpoint.make_manager(str(tmp_path), max_to_keep=2, keep_every=4,
                                 async_save=False)
  for step in range(1, 11):
    _save(mngr, step)
  assert sorted(mngr.all_steps()) == [4, 8, 9, 10]
  with pytest.raises(ValueError, match='train.keep_every must be a positive integer '
                     'or None, got 0'):
    checkpoint.make_manager(str(tmp_path), keep_every=0)


@pytest.mark.slow  # The manager-level tests above are its default twins.
def test_a_run_whose_save_fails_stops_with_the_last_good_step_restorable(
    tmp_path, monkeypatch):
  config = small_config(steps=6, checkpoint_every=2)
  _fail_step(monkeypatch, 4)
  with pytest.raises(errors.CheckpointSaveError,
                     match=r'step 4 to .*checkpoints/4 \(No space left on device'):
    trainer.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / '.dllm_lock')  # Released on the error.
  monkeypatch.undo()
  assert checkpoint.read_meta(str(tmp_path))['step'] == 2
  assert checkpoint.restore_for_inference(str(tmp_path)).params  # Restorable.


@pytest.mark.slow
def test_a_run_whose_save_failed_resumes_from_the_last_good_step(tmp_path,
                                                                 monkeypatch):
  config = small_config(steps=6, checkpoint_every=2)
  _fail_step(monkeypatch, 4)
  with pytest.raises(errors.CheckpointSaveError):
    trainer.train(config, str(tmp_path))
  monkeypatch.undo()  # Space is free again: the rerun resumes at step 2.
  state = trainer.train(config, str(tmp_path))
  assert int(state.step) == 6
  assert checkpoint.read_meta(str(tmp_path))['step'] == 6


@pytest.mark.parametrize('mode,error', [('eperm', 'Operation not permitted'),
                                        ('enospc', 'No space left on device')])
def test_a_save_that_cannot_write_ends_the_run_in_one_line_within_seconds(
    tmp_path, mode, error):
  """A checkpoint folder that takes no new entry (chattr +i, a read-only
  remount: Orbax's async save used to deadlock) or a full disk: one line naming
  the path and the OS error, exit 1, the earlier checkpoint intact."""
  start = time.time()
  r = subprocess.run(
      [sys.executable, '-m', 'tests.save_failure_worker', mode,
       f'--workdir={tmp_path}', *SMALL_CLI, '--config.train.steps=6',
       '--config.train.checkpoint_every=2', '--config.train.log_every=2',
       '--config.sample.num_samples=0'], cwd=REPO, capture_output=True, text=True,
      timeout=180)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  ckpt = checkpoint.checkpoint_dir(str(tmp_path))
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: cannot write checkpoint step 4 to {ckpt}/4 '
                         f'({error}'), last
  assert 'the checkpoints already there (steps 2) stay restorable' in last, last
  assert len(r.stderr.strip().splitlines()) < 10, r.stderr
  assert time.time() - start < 120
  assert sorted(os.listdir(ckpt)) == ['2']
  assert checkpoint.read_meta(str(tmp_path))['step'] == 2
  assert checkpoint.restore_for_inference(str(tmp_path)).params


def test_a_full_disk_inside_tensorstore_is_named_by_its_os_error():
  """TensorStore's error text cut at 300 characters used to drop the OS error."""
  from dllm_jax.training import save_guard  # pylint: disable=g-import-not-at-top
  path = '/w/checkpoints/4.orbax-checkpoint-tmp/opt_state/ocdbt.process_0'
  e = ValueError(f'RESOURCE_EXHAUSTED: Error writing "1.0.mu.w/0" in OCDBT database '
                 f'at local file "{path}/": Failed writing: "{path}/d/0a1b": Failed '
                 "to write 6829 bytes to file 8: No space left on device "
                 "[os_error_code='28']")
  assert save_guard._cause(e) == f'No space left on device: {path}/d/0a1b'  # pylint: disable=protected-access
