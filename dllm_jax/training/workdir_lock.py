"""One writer per workdir: a lock file held for the life of a run.

`WORKDIR/.dllm_lock` is created atomically (O_CREAT | O_EXCL) and holds JSON
{host, pid, pid_ns, started} of its holder (`pid_ns`: the holder's PID namespace,
so that two containers sharing a hostname and a volume do not read each
other's pids as their own). A second run on the same workdir refuses in
one line naming the holder. A lock left by a run that died without releasing it
(kill -9, a lost node) is stale and taken over with a warning:

  * same host and PID namespace: the holder's pid no longer exists (or is this
    process, which does not hold it);
  * any holder (another host sharing the filesystem, another container with the
    same hostname, or a pid reused by an unrelated process): the lock file's
    mtime, refreshed every `heartbeat_s` by a daemon thread of the holder, is
    older than `stale_after_s`. A fresh heartbeat is trusted over a pid that
    cannot be checked.

A run whose lock was taken over (it was suspended past `stale_after_s`, a frozen
VM) must stop writing: `check_held` is called before every save and raises
WorkdirLockedError naming the new holder; the heartbeat thread also notices and
sets `lost`, which the trainer reads after every step.

In a multi-process run only process 0 takes (and writes) the lock; the outcome
is broadcast so every process stops when it is refused. The lock is released
on every exit that runs Python's `finally` (normal end, exception, the trainer's
SIGTERM stop); a kill -9 leaves it, to be found stale.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import warnings
from typing import Any, Iterator

from dllm_jax.errors import WorkdirLockedError

LOCK_NAME = '.dllm_lock'
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
_HELD: set[str] = set()  # Lock paths this process holds.


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def _pid_namespace() -> str | None:
  """This process's PID namespace ('pid:[4026531836]'), None where /proc lacks it."""
  try:
    return os.readlink('/proc/self/ns/pid')
  except OSError:
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by another user.
    return True
  return True


def _describe(holder: dict[str, Any]) -> str:
  return (f'host {holder.get("host")!r}, pid {holder.get("pid")}, started '
          f'{holder.get("started")}')


def _read(path: str) -> dict[str, Any] | None:
  """The holder record, {} if unreadable (being written / corrupt), None if gone."""
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    holder = json.loads(text)
    return holder if isinstance(holder, dict) else {}
  except json.JSONDecodeError:
    return {}


def stale_reason(path: str, holder: dict[str, Any], *,
                 stale_after_s: float = STALE_AFTER_S) -> str | None:
  """Why the lock at `path` (held by `holder`) is stale, or None if it is live."""
  try:
    age = time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return 'it is gone'
  pid = holder.get('pid')
  # Pids mean something only in the holder's own PID namespace (a lock written
  # without one, by an older version, is judged by its heartbeat alone).
  if (holder.get('host') == socket.gethostname() and isinstance(pid, int) and
      holder.get('pid_ns', 'unknown') == _pid_namespace()):
    if pid == os.getpid() and path not in _HELD:  # Restarted containers reuse pids.
      return f'pid {pid} is this process, which does not hold it'
    if not _pid_alive(pid):
      return f'pid {pid} no longer runs on this host'
  if age > stale_after_s:  # A live holder refreshes it (also: a reused pid).
    return f'no heartbeat for {age:.0f} s (> {stale_after_s:.0f} s)'
  return None


class WorkdirLock:
  """The lock of one workdir; `acquire()` / `release()` or `with`."""

  def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    self.path = lock_path(workdir)
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self.record = {'host': socket.gethostname(), 'pid': os.getpid(),
                   'pid_ns': _pid_namespace(),
                   'started': datetime.datetime.now(datetime.timezone.utc)
                              .isoformat(timespec='seconds')}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.lost = False  # Set by the heartbeat once another run holds the lock.

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      with os.fdopen(fd, 'w') as f:
        json.dump(self.record, f)
    except OSError:  # E.g. a full disk: leave no empty lock behind.
      os.unlink(self.path)
      raise
    return True

  def _take_over_if_stale(self) -> bool:
    """Removes a stale lock and takes it, under a flock so that two runs that
    both find it stale cannot both take it."""
    with open(self.path + '.guard', 'a') as guard:
      fcntl.flock(guard, fcntl.LOCK_EX)
      try:
        holder = _read(self.path)
        if holder is None:
          return self._create()
        reason = stale_reason(self.path, holder, stale_after_s=self.stale_after_s)
        if reason is None:
          raise WorkdirLockedError(
              f'workdir {os.path.dirname(self.path)} is in use by another run '
              f'({_describe(holder)}); wait for it to end, or remove {self.path} '
              'if that run is gone.')
        warnings.warn(f'taking over the stale lock {self.path} of '
                      f'{_describe(holder)}: {reason}.')
        os.unlink(self.path)
        return self._create()
      finally:
        fcntl.flock(guard, fcntl.LOCK_UN)

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLockedError naming its holder."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    if not (self._create() or self._take_over_if_stale()):
      holder = _read(self.path) or {}
      raise WorkdirLockedError(f'workdir {os.path.dirname(self.path)} was locked '
                               f'at the same moment by {_describe(holder)}.')
    _HELD.add(self.path)
    self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                    name='workdir-lock-heartbeat')
    self._thread.start()

  def _owned(self) -> bool:
    return _read(self.path) == self.record

  def check(self) -> None:
    """Raises WorkdirLockedError if another run took the lock over."""
    if self._owned():
      return
    self.lost = True
    holder = _read(self.path)
    now = (f'it is now held by {_describe(holder)}' if holder else
           'its lock file is gone')
    raise WorkdirLockedError(
        f'this run lost the workdir lock {self.path} ({now}; this run was '
        f'probably suspended for over {self.stale_after_s:.0f} s); it stops '
        'without writing. Make sure only one run uses the workdir, then rerun.')

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      if not self._owned():
        self.lost = True  # The trainer stops at its next step (`check`).
        return
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._owned():
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.path)
    _HELD.discard(self.path)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def check_held(lock: WorkdirLock | None) -> None:
  """Before a write: raises WorkdirLockedError on every process if process 0's
  lock was taken over by another run (`lock`: what `hold` yielded)."""
  import jax  # pylint: disable=g-import-not-at-top
  error = None
  if lock is not None:
    try:
      lock.check()
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      raise WorkdirLockedError('process 0 lost the workdir lock to another run; '
                               'this run stops without writing (see its error).')
  if error is not None:
    raise error


@contextlib.contextmanager
def hold(workdir: str, **options) -> Iterator[WorkdirLock | None]:
  """Holds the workdir lock for the `with` body: process 0 takes it, the other
  processes learn whether it succeeded (and refuse with it). Yields the lock on
  process 0, None elsewhere."""
  import jax  # pylint: disable=g-import-not-at-top
  if '://' in workdir:  # gs:// etc.: no O_EXCL or pids there; Orbax writes it.
    warnings.warn(f'no workdir lock on {workdir} (only local or shared POSIX '
                  'filesystems); make sure no other run writes there.')
    yield None
    return
  lock = WorkdirLock(workdir, **options) if jax.process_index() == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except (WorkdirLockedError, OSError) as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      raise WorkdirLockedError(f'process 0 could not lock the workdir {workdir}; '
                               'see its error.')
  if isinstance(error, OSError):  # E.g. a read-only workdir.
    raise WorkdirLockedError(f'cannot create the workdir lock {lock.path}: '
                             f'{error.strerror or error}.')
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
