"""Checkpoint saves that fail (no space, no permission) end the run in one line.

Orbax writes a step into a temporary folder (`STEP.orbax-checkpoint-tmp-*`) and
renames it to `STEP` only once every file is written, so a failed save never
becomes the latest step and the steps already there stay restorable. With
asynchronous saves the failure happens in a background thread and surfaces at
the next `save` or `wait_until_finished`; `GuardedManager` turns it there into a
`CheckpointSaveError` naming the step's path and the steps still restorable.
Retention: `max_to_keep` newest steps, plus every step divisible by
`keep_every` (Orbax's `keep_period`), which are never deleted.

Before each save the manager checks, on every process, that the checkpoint
folder takes a new entry (a probe folder: a read-only remount, an immutable
folder or missing permission would otherwise fail inside Orbax's background
threads, which then wait forever for each other) and that the disk has room
for a checkpoint the size of the newest one; either failure is the same
one-line error, before anything is written. Once a step is committed, the
primary process writes its checksum manifest (`dllm_jax/training/checksums.py`).
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp

from dllm_jax.training import checksums
from dllm_jax.errors import CheckpointSaveError

# Room asked for beyond the newest checkpoint's size (files vary a little).
SPACE_MARGIN = 1.05


def _cause(e: BaseException) -> str:
  """The innermost error's text, on one line (Orbax wraps it in several); an OS
  error inside TensorStore's long message (`[os_error_code='28']`) as its
  strerror and file."""
  while e.__cause__ is not None or (e.__context__ is not None and
                                    not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  if isinstance(e, OSError) and e.strerror:
    where = f': {e.filename}' if e.filename else ''
    return f'{e.strerror}{where}'
  text = str(e)
  code = re.search(r"os_error_code='(\d+)'", text)
  if code:
    files = re.findall(r'"(/[^"]+)"', text)
    return os.strerror(int(code.group(1))) + (f': {files[-1]}' if files else '')
  lines = text.strip().splitlines()
  return f'{type(e).__name__}: {lines[0][:300] if lines else ""}'


class GuardedManager(ocp.CheckpointManager):
  """A CheckpointManager whose save failures raise CheckpointSaveError.

  The error names the failed step's folder and the steps already committed.
  After one failure the manager refuses further saves (the run should end) and
  `wait_until_finished` returns quietly (the error was raised once already).
  """

  _pending: int | None = None
  _in_save = False
  _failed: CheckpointSaveError | None = None

  def _error(self, step: int | None, e: BaseException) -> CheckpointSaveError:
    where = (f'step {step} to {os.path.join(os.fspath(self.directory), str(step))}'
             if step is not None else f'to {os.fspath(self.directory)}')
    kept = sorted(s for s in self._committed_steps() if s != step)
    left = (f'the checkpoints already there (steps {", ".join(map(str, kept))}) '
            'stay restorable' if kept else 'no earlier checkpoint exists')
    self._failed = CheckpointSaveError(
        f'cannot write checkpoint {where} ({_cause(e)}); the run stops; {left}. '
        'Free space or fix permissions, then rerun to resume.')
    return self._failed

  def _preflight(self, step: int) -> None:
    """Raises CheckpointSaveError (on every process alike) if the checkpoint
    folder cannot take a new entry or lacks room for one more checkpoint."""
    directory = os.fspath(self.directory)
    error = None
    # Object stores have no folders or statvfs; a folder not made yet (another
    # process creates it) is left to Orbax.
    if '://' not in directory and os.path.isdir(directory):
      probe = os.path.join(directory, f'.dllm_write_probe-{step}-'
                           f'{jax.process_index()}-{os.getpid()}')
      try:
        os.mkdir(probe)
        os.rmdir(probe)
        newest = max(self._committed_steps(), default=None)
        if newest is not None and jax.process_index() == 0:
          need = _size(os.path.join(directory, str(newest))) * SPACE_MARGIN
          st = os.statvfs(directory)
          free = st.f_bavail * st.f_frsize
          if free < need:
            raise OSError(28, f'{os.strerror(28)}: {free / 2**20:.1f} MiB free '
                          f'in {directory}, the newest checkpoint (step {newest}) '
                          f'took {need / SPACE_MARGIN / 2**20:.1f} MiB')
      except OSError as e:
        error = e
    failed = error is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      failed = bool(np.max(multihost_utils.process_allgather(np.int32(failed))))
    if failed:
      raise self._error(step, error or OSError(
          'another process cannot write there (see its error)'))

  def _write_manifest(self, step: int | None) -> None:
    """The checksum manifest of a committed step (primary process)."""
    if step is None or jax.process_index() != 0:
      return
    step_dir = os.path.join(os.fspath(self.directory), str(step))
    if '://' in step_dir or not os.path.isdir(step_dir):
      return
    try:
      checksums.write_manifest(step_dir)
    except OSError as e:  # The step itself is complete: restorable unchecked.
      raise self._error(step, e) from e

  def _committed_steps(self) -> list[int]:
    """Steps whose folders are complete on disk (not Orbax's in-memory list,
    which already holds the step being written)."""
    try:
      names = os.listdir(os.fspath(self.directory))
    except OSError:
      return []
    return [int(n) for n in names if n.isdigit()]

  def save(self, step: int, *args, **kwargs) -> bool:
    if self._failed is not None:
      raise self._failed
    # A pending async save's failure surfaces here: blame that step.
    self.wait_until_finished()
    self._preflight(step)
    self._in_save = True  # Orbax's save calls wait_until_finished itself.
    try:
      saved = super().save(step, *args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(step, e) from e
    finally:
      self._in_save = False
    if self._options.enable_async_checkpointing:
      self._pending = step
    else:
      self._write_manifest(step)
    return saved

  def wait_until_finished(self) -> None:
    if self._in_save:
      return super().wait_until_finished()
    if self._failed is not None:
      return None  # Already raised; nothing of ours is pending.
    try:
      super().wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._pending = self._pending, None
      raise self._error(step, e) from e
    step, self._pending = self._pending, None
    self._write_manifest(step)
    return None


def _size(path: str) -> int:
  """Bytes of the files under `path`."""
  return sum(os.path.getsize(os.path.join(root, n))
             for root, _, names in os.walk(path) for n in names)


def manager_options(*, max_to_keep: int | None, keep_every: int | None,
                    async_save: bool) -> ocp.CheckpointManagerOptions:
  """Orbax options: retention (`max_to_keep` newest, every `keep_every`-th
  kept forever; None: no such rule), async saves, and removal of temporary
  folders a killed save left behind."""
  for name, value in (('train.max_to_keep', max_to_keep),
                      ('train.keep_every', keep_every)):
    if value is not None and (not isinstance(value, int) or value <= 0):
      raise ValueError(f'{name} must be a positive integer or None, got {value!r}.')
  return ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, keep_period=keep_every,
      enable_async_checkpointing=async_save, create=True,
      cleanup_tmp_directories=True)

