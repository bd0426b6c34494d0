"""One writer per workdir: the lock file, stale locks, and two launchers racing."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import pytest

from dllm_jax import errors
from dllm_jax.training import workdir_lock
from tests.support import REPO, SMALL_CLI, launch_train


def _write_lock(workdir, host, pid, age_s=0.0, pid_ns=None):
  """A lock file of `host`/`pid` (in this process's PID namespace unless
  `pid_ns` names another) whose heartbeat is `age_s` old."""
  path = workdir_lock.lock_path(str(workdir))
  with open(path, 'w') as f:
    json.dump({'host': host, 'pid': pid,
               'pid_ns': pid_ns or workdir_lock._pid_namespace(),  # pylint: disable=protected-access
               'started': '2026-01-01T00:00:00+00:00'}, f)
  then = time.time() - age_s
  os.utime(path, (then, then))
  return path


def test_lock_records_its_holder_and_a_second_lock_is_refused(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
    with open(lock.path) as f:
      holder = json.load(f)
    assert holder['host'] == socket.gethostname() and holder['pid'] == os.getpid()
    assert holder['started'].endswith('+00:00')
    with pytest.raises(errors.WorkdirLockedError,
                       match=rf"in use by another run \(host '{socket.gethostname()}', "
                       rf"pid {os.getpid()}, started "):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert not os.path.exists(lock.path)  # Released.


def test_lock_is_released_when_the_body_raises(tmp_path):
  with pytest.raises(RuntimeError):
    with workdir_lock.hold(str(tmp_path)):
      raise RuntimeError('boom')
  assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))


@pytest.mark.filterwarnings("ignore:os.fork")
def test_stale_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:  # The child takes the lock, says so, and waits to be killed.
    try:
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
      os.write(write, b'locked')
      time.sleep(600)
    finally:
      os._exit(1)
  os.close(write)
  try:
    assert os.read(read, 6) == b'locked'
    with pytest.raises(errors.WorkdirLockedError, match=f'pid {pid}'):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read)
  with pytest.warns(UserWarning, match=rf'stale lock .*pid {pid}.*no longer runs'):
    with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
      with open(lock.path) as f:
        assert json.load(f)['pid'] == os.getpid()


def test_lock_of_another_host_is_stale_only_without_a_heartbeat(tmp_path):
  path = _write_lock(tmp_path, 'other-node', 1, age_s=5)
  with pytest.raises(errors.WorkdirLockedError, match="host 'other-node', pid 1"):
    workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=60).acquire()
  _write_lock(tmp_path, 'other-node', 1, age_s=120)
  with pytest.warns(UserWarning, match=r'no heartbeat for 12\d s'):
    with workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=60):
      pass
  assert not os.path.exists(path)


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05) as lock:
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - os.stat(lock.path).st_mtime < 5


def test_only_process_zero_takes_the_lock(tmp_path):
  with mock.patch('jax.process_index', return_value=1):
    with workdir_lock.hold(str(tmp_path)) as lock:
      assert lock is None
      assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))


def test_a_second_launch_train_on_the_same_workdir_refuses_in_one_line(tmp_path):
  first = launch_train(tmp_path, '--config.train.steps=100000',
                       '--config.train.log_every=1',
                       '--config.train.checkpoint_every=100000')
  try:
    # Wait until it holds the lock: the mesh line is logged under it, before the
    # train step compiles (no need to wait for that).
    for line in first.stdout:
      if line.startswith('mesh: '):
        break
    second = subprocess.run(
        [sys.executable, '-m', 'launch.train', f'--workdir={tmp_path}',
         '--config.train.steps=2'], cwd=REPO, capture_output=True, text=True,
        timeout=120)
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()
  assert second.returncode != 0 and 'Traceback' not in second.stderr, second.stderr
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: workdir {tmp_path} is in use by another run (host '
                         f"'{socket.gethostname()}', pid {first.pid}, started "), last


def test_a_lock_naming_this_process_or_a_silent_live_pid_is_stale(tmp_path):
  _write_lock(tmp_path, socket.gethostname(), os.getpid())  # A restarted container.
  with pytest.warns(UserWarning, match='is this process, which does not hold it'):
    with workdir_lock.WorkdirLock(str(tmp_path)):
      pass
  _write_lock(tmp_path, socket.gethostname(), os.getppid(), age_s=300)  # Reused pid.
  with pytest.warns(UserWarning, match=r'no heartbeat for 30\d s'):
    with workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=60):
      pass


def test_object_store_workdirs_are_not_locked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.warns(UserWarning, match='no workdir lock on gs://bucket/run'):
    with workdir_lock.hold('gs://bucket/run') as lock:
      assert lock is None
  assert not os.listdir(tmp_path)  # No local 'gs:' folder.


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_a_same_named_host_in_another_container_is_trusted_by_its_heartbeat(tmp_path):
  """Two containers that share a hostname and a volume: the other's pid means
  nothing here, so its fresh heartbeat keeps the lock; in our own PID namespace
  a dead pid is stale at once (kill -9, then rerun)."""
  pid = _dead_pid()
  _write_lock(tmp_path, socket.gethostname(), pid, age_s=1, pid_ns='pid:[1]')
  with pytest.raises(errors.WorkdirLockedError, match=f'pid {pid}'):
    workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=60).acquire()
  _write_lock(tmp_path, socket.gethostname(), pid, age_s=1)
  with pytest.warns(UserWarning, match=f'pid {pid} no longer runs on this host'):
    with workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=60):
      pass


def _wait_for(proc, prefix: str, lines: list[str]) -> None:
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return
  raise AssertionError(''.join(lines))


def test_a_run_that_lost_its_lock_stops_without_writing(tmp_path):
  """Another run takes the lock over while this one saves step 6 (as when it
  was suspended past the stale timeout): the save of step 9 is refused, the run
  ends in one line and leaves the new holder's lock alone."""
  r = subprocess.run(
      [sys.executable, '-m', 'tests.save_failure_worker', 'takeover',
       f'--workdir={tmp_path}', *SMALL_CLI, '--config.train.steps=12',
       '--config.train.checkpoint_every=3', '--config.train.log_every=3',
       '--config.sample.num_samples=0'], cwd=REPO, capture_output=True, text=True,
      timeout=180)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  path = workdir_lock.lock_path(str(tmp_path))
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: this run lost the workdir lock {path} (it is now '
                         "held by host 'other-node', pid 4242, started "), last
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  with open(path) as f:
    assert json.load(f)['host'] == 'other-node'  # The new holder's lock stays.


def test_sigterm_during_start_up_releases_the_lock(tmp_path):
  # A model shape no other test compiles: its compile (seconds, not in the
  # session's XLA cache) is the start-up the signal lands in.
  proc = launch_train(tmp_path, '--config.train.steps=5', '--config.model.n_layers=3')
  lines = []
  try:
    _wait_for(proc, 'mesh: ', lines)  # Logged under the lock, before compiling.
    proc.send_signal(signal.SIGTERM)
    out = ''.join(lines) + proc.communicate(timeout=120)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 0, out
  assert 'stopped by SIGTERM during start-up, before step 1' in out, out
  assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))
