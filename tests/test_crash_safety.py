"""Crash safety: preemption, kill -9 anywhere, corrupt checkpoints, NaN guard,
provenance checks on resume, no pickle on any load path."""

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dllm_jax import errors
from dllm_jax.training import checkpoint, trainer
from tests.support import REPO, free_port as _free_port, launch_train as _launch, read_batch_log as _batches, small_config

# The runs here check parameters, steps and batches, not the end-of-run sample:
# they skip it (its compile and its decoding).
NO_SAMPLE = '--config.sample.num_samples=0'


def _config(**train):
  """`small_config(**train)` without the end-of-run sample."""
  config = small_config(**train)
  config.sample.num_samples = 0
  return config


def _params(workdir):
  return checkpoint.restore_for_inference(str(workdir)).params




def test_sigterm_saves_at_the_current_step_and_resumes_there(tmp_path):
  proc = _launch(tmp_path, '--config.train.steps=3000', '--config.train.log_every=20',
                 '--config.train.checkpoint_every=100000')
  lines = []
  for line in proc.stdout:  # Wait until training is under way.
    lines.append(line)
    if line.startswith('step 40/'):
      break
  proc.send_signal(signal.SIGTERM)
  out = ''.join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  match = re.search(r'stopped by SIGTERM after step (\d+): checkpoint saved', out)
  assert match, out
  step = int(match.group(1))
  assert 40 <= step < 3000
  assert checkpoint.read_meta(str(tmp_path))['step'] == step
  proc = _launch(tmp_path, '--config.train.steps=3000',
                 '--config.train.checkpoint_every=100000', '--config.train.log_every=20')
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('resumed from') or line.startswith('step '):
      break
  proc.kill()
  proc.communicate()
  assert lines[-1].startswith(f'resumed from step {step} '), ''.join(lines)


def test_ctrl_c_saves_and_stops_in_one_line_like_sigterm(tmp_path):
  proc = _launch(tmp_path, '--config.train.steps=3000', '--config.train.log_every=2',
                 '--config.train.checkpoint_every=100000', NO_SAMPLE)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('step 4/'):
      break
  proc.send_signal(signal.SIGINT)
  out = ''.join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0 and 'Traceback' not in out, out
  assert 'Ctrl-C: saving after this step' in out, out  # Said at once.
  match = re.search(r'stopped by SIGINT after step (\d+): checkpoint saved', out)
  assert match, out
  assert checkpoint.read_meta(str(tmp_path))['step'] == int(match.group(1))


# The default run kills once, mid-run (40 steps and 8 saves before its end);
# -m slow kills four times over 200 steps, once during start-up. Timeouts allow
# for a loaded 2-core machine, where one launch can take minutes.
@pytest.mark.parametrize('steps,targets', [
    (60, (20,)), pytest.param(200, (None, 30, 90, 150), marks=pytest.mark.slow)])
def test_kill_9_anywhere_gives_the_uninterrupted_run(tmp_path, steps, targets):
  """SIGKILL at random moments (starting up, stepping, mid async save), restart
  each time: same final parameters (bitwise) and the same consumed batches."""
  run = [f'--config.train.steps={steps}', '--config.train.checkpoint_every=5',
         '--config.train.log_every=10', '--config.train.record_batches=True', NO_SAMPLE]
  full, crashed = tmp_path / 'full', tmp_path / 'crashed'
  proc = _launch(full, *run)
  out = proc.communicate(timeout=900)[0]
  assert proc.returncode == 0, out
  rng = random.Random(0)
  # Kill during start-up, then shortly after the log line of a chosen step (a
  # random 0-0.3 s later: inside a step or an async save, at steps that are not
  # multiples of the checkpoint interval too).
  for target in targets:
    proc = _launch(crashed, *run)
    if target is None:
      time.sleep(1.0)
    else:
      for line in proc.stdout:
        if line.startswith(f'step {target}/'):
          break
      time.sleep(rng.uniform(0.0, 0.3))
    assert proc.poll() is None, 'the run ended before it could be killed'
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=900)
  proc = _launch(crashed, *run)
  out = proc.communicate(timeout=900)[0]
  assert proc.returncode == 0, out
  for a, b in zip(jax.tree.leaves(_params(crashed)), jax.tree.leaves(_params(full))):
    np.testing.assert_array_equal(a, b)
  assert _batches(crashed) == _batches(full)
  assert len(_batches(full)) == steps


def _corrupt(step_dir, how):
  if how == 'truncate':
    files = [f for f in glob.glob(os.path.join(step_dir, 'params', '**', '*'),
                                  recursive=True) if os.path.isfile(f)]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 2)
  else:
    for f in glob.glob(os.path.join(step_dir, 'opt_state', '**', '*'), recursive=True):
      if os.path.isfile(f):
        os.remove(f)


@pytest.fixture(scope='module')
def four_steps(tmp_path_factory):
  """A workdir of _config(steps=4, checkpoint_every=2): checkpoints at
  steps 2 and 4; tests copy it (`_copy`) before they break or resume it."""
  workdir = tmp_path_factory.mktemp('four_steps')
  trainer.train(_config(steps=4, checkpoint_every=2), str(workdir))
  return str(workdir)


def _copy(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / 'run')
  return tmp_path / 'run'


@pytest.mark.parametrize('how', ['truncate', 'missing'])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, how, four_steps):
  config = _config(steps=4, checkpoint_every=2)
  tmp_path = _copy(four_steps, tmp_path)
  _corrupt(os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), '4'), how)
  config.train.steps = 6
  with pytest.warns(UserWarning, match='checkpoint at step 4 cannot be restored'):
    state = trainer.train(config, str(tmp_path))
  assert int(state.step) == 6
  assert os.listdir(tmp_path / 'corrupt_checkpoints')


def _flip_bytes(step_dir, item):
  """Flips bytes in the middle of the biggest array-data file of `item` (its
  size stays: Orbax restores it without a word)."""
  files = [f for f in glob.glob(os.path.join(step_dir, item, '**', '*'),
                                recursive=True) if os.path.isfile(f)]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.seek(os.path.getsize(biggest) // 2)
    data = f.read(8)
    f.seek(os.path.getsize(biggest) // 2)
    f.write(bytes(b ^ 0x5A for b in data))
  return os.path.relpath(biggest, step_dir)


@pytest.mark.filterwarnings('ignore:checkpoint at step 2 cannot be restored')
def test_flipped_bytes_are_found_by_checksum_quarantined_and_skipped(tmp_path,
                                                                  four_steps):
  tmp_path = _copy(four_steps, tmp_path)
  ckpt = checkpoint.checkpoint_dir(str(tmp_path))
  bad = _flip_bytes(os.path.join(ckpt, '4'), 'params')
  message = (rf'checkpoint at step 4 cannot be restored \(ChecksumError: '
             rf'{re.escape(bad)} does not match its checksum')
  with pytest.warns(UserWarning, match=message):  # Sampling skips it too.
    params = checkpoint.restore_for_inference(str(tmp_path)).params
  ok = checkpoint.restore_for_inference(str(four_steps), step=2).params
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ok)):
    np.testing.assert_array_equal(a, b)
  _flip_bytes(os.path.join(ckpt, '2'), 'opt_state')
  # Training: both are quarantined; with none left the run refuses in one line.
  with pytest.warns(UserWarning, match=message):
    with pytest.raises(errors.CheckpointError,
                       match=r'no checkpoint .* can be restored: step 4 .*; step 2 '
                       r'\(ChecksumError: opt_state/.*; moved to .*corrupt_checkpoints; '
                       r'set --config.train.fresh_start=True'):
      trainer.train(_config(steps=6, checkpoint_every=2), str(tmp_path))
  assert sorted(n.split('-')[0] for n in os.listdir(tmp_path / 'corrupt_checkpoints')
                ) == ['2', '4']


def test_no_restorable_checkpoint_refuses_until_a_fresh_start_is_asked(tmp_path,
                                                                      four_steps,
                                                                      capsys):
  config = _config(steps=4, checkpoint_every=2)
  tmp_path = _copy(four_steps, tmp_path)
  for step in ('2', '4'):
    _corrupt(os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), step), 'missing')
  with pytest.warns(UserWarning):
    with pytest.raises(errors.CheckpointError, match='can be restored.*fresh_start'):
      trainer.train(config, str(tmp_path))
  # The next run finds only quarantined checkpoints: no silent fresh start.
  with pytest.raises(errors.CheckpointError, match=r'has no checkpoint, and earlier '
                     r'runs moved corrupt ones to .*corrupt_checkpoints \(2-\d+, '
                     r'4-\d+\); refusing .*fresh_start=True'):
    trainer.train(config, str(tmp_path))
  config.train.fresh_start = True
  config.optimizer.warmup_steps = 10  # Longer than the run: said, not silent.
  state = trainer.train(config, str(tmp_path))
  assert int(state.step) == 4
  out = capsys.readouterr().out
  assert 'starting from scratch' in out
  assert ('optimizer.warmup_steps=10 does not fit before the decay of this 4-step '
          'run (decay_fraction=0.3): the learning rate warms up over 3 steps '
          'instead.') in out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _config(steps=6, checkpoint_every=2, log_every=1, debug_nan_step=3)
  with pytest.raises(errors.NonFiniteError,
                     match=r'non-finite loss at step 4 .*last good checkpoint \(step 2\)'):
    trainer.train(config, str(tmp_path))
  assert checkpoint.read_meta(str(tmp_path))['step'] == 2
  params = _params(tmp_path)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_nan_loss_can_be_skipped_and_counted(tmp_path):
  config = _config(steps=6, checkpoint_every=3, debug_nan_step=3)
  config.train.nonfinite = 'skip'
  state = trainer.train(config, str(tmp_path))
  assert int(state.step) == 6
  assert int(state.guard['skipped']) == 1
  assert checkpoint.read_meta(str(tmp_path))['skipped_updates'] == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_resume_refuses_a_changed_model_and_logs_harmless_changes(tmp_path, capsys,
                                                                 trained_workdir):
  tmp_path = tmp_path / 'run'
  shutil.copytree(trained_workdir[0], tmp_path)  # Two steps of small_config(steps=2).
  meta = checkpoint.read_meta(str(tmp_path))
  assert {'config', 'model_config', 'tokenizer', 'dllm_jax_version', 'jax_version',
          'mesh'} <= set(meta)
  changed = small_config(steps=2)
  changed.model.d_model = 64
  changed.data.seq_len = 16
  with pytest.raises(ValueError, match=r'refusing to resume.*d_model: 32 -> 64.*'
                     r'data.seq_len: 32 -> 16'):
    trainer.train(changed, str(tmp_path))
  assert not os.path.exists(tmp_path / 'corrupt_checkpoints')  # Refused, not "corrupt".
  harmless = small_config(steps=4, log_every=1)
  trainer.train(harmless, str(tmp_path))
  out = capsys.readouterr().out
  assert "config change since the checkpoint (allowed): config.train.log_every: 2 -> 1" in out
  assert 'resumed from step 2' in out


def test_no_load_path_uses_pickle():
  sources = glob.glob(os.path.join(REPO, 'dllm_jax', '**', '*.py'), recursive=True)
  sources += glob.glob(os.path.join(REPO, 'launch', '**', '*.py'), recursive=True)
  for path in sources:
    with open(path) as f:
      text = f.read()
    assert not re.search(r'\bimport (c?pickle|dill|cloudpickle)\b', text), path
    assert 'allow_pickle=True' not in text, path




def test_sigterm_on_one_host_stops_every_host_at_the_same_step():
  """Two JAX processes on loopback: SIGTERM to one reaches JAX's preemption sync
  point, and both stop after the same step."""
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, '-m', 'tests.preemption_worker', str(i),
                             str(port)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True) for i in range(2)]
  try:
    for p in procs:
      assert p.stdout.readline().startswith('ready'), 'worker did not start'
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  steps = [re.search(r'stopped at step (\d+) by preemption notice', o) for o in outs]
  assert all(steps), outs
  assert steps[0].group(1) == steps[1].group(1), outs
