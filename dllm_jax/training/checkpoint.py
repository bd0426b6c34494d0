"""Saving and restoring the whole train state of a run (Orbax).

`save_state` and `restore_state` are each other's inverse: a `TrainState`
(step, params, optimizer state, non-finite guard), the data iterator's position
and the JSON meta go in, and the same come out. The workdir layout and
restoring parameters for inference live in `dllm_jax/training/workdir.py` (re-exported
here), below both training and inference.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dllm_jax.training import checksums
from dllm_jax.data import shards
from dllm_jax.errors import CheckpointError
from dllm_jax.training import elastic, save_guard, train_step as ts
from dllm_jax.training.workdir import (Restored, checkpoint_dir, describe, on_device,
                              quarantine_dir, read_meta, restore_for_inference,
                              restore_meta)

__all__ = ['Restored', 'checkpoint_dir', 'on_device', 'read_meta',
           'restore_for_inference', 'restore_meta', 'make_manager', 'fingerprint',
           'make_meta', 'save_state', 'restore_state', 'restore_latest_good']


def make_manager(workdir: str, *, max_to_keep: int | None = 3,
                 keep_every: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """The workdir's manager: failed saves raise CheckpointSaveError; keeps the
  `max_to_keep` newest steps and every step divisible by `keep_every`."""
  # Failure handling and retention live in save_guard.py.
  return save_guard.GuardedManager(
      checkpoint_dir(workdir), options=save_guard.manager_options(
          max_to_keep=max_to_keep, keep_every=keep_every, async_save=async_save))


def fingerprint(params) -> str:
  """An exact, layout-independent digest of a parameter tree: per leaf, the
  wrapping uint32 sum of its bit patterns times (position + 1), computed where the
  arrays live (sharded or not) and combined into 16 hex digits. Equal parameters
  give equal fingerprints on any mesh; a flipped bit changes it."""

  def leaf(x):
    bits = jax.lax.bitcast_convert_type(
        x.astype(jnp.float32) if x.dtype != jnp.float32 else x, jnp.uint32).reshape(-1)
    weights = jnp.arange(1, bits.size + 1, dtype=jnp.uint32)
    return jnp.sum(bits * weights, dtype=jnp.uint32)

  sums = jax.device_get(jax.jit(lambda t: [leaf(x) for x in jax.tree.leaves(t)])(params))
  total = 0
  for i, v in enumerate(sums):
    total = (total * 1_000_003 + int(v) + i) % (1 << 64)
  return f'{total:016x}'


def make_meta(step: int, record: dict[str, Any]) -> dict[str, Any]:
  """The JSON meta of a checkpoint: its step plus the run's provenance record."""
  return {'step': int(step), **record}


def save_state(mngr: ocp.CheckpointManager, state: ts.TrainState, data_iter,
               record: dict[str, Any]) -> int:
  """Starts an (async) save of `state` at its step; returns that step.

  Items: params, opt_state (Orbax arrays), data (the iterator position, if
  any: per data shard for a `shards.ShardedIterator`, see `elastic.py`, else
  Grain's per process) and meta (`record` plus the step, the data shard count
  and the guard's skipped-update count; a saved state never has a bad step, so
  that count is the whole guard).
  """
  step = int(jax.device_get(state.step))
  skipped = int(jax.device_get(state.guard['skipped']))
  record = {**record, 'skipped_updates': skipped}
  if isinstance(data_iter, shards.ShardedIterator):
    record['data_shards'] = data_iter.shard_count
    items = dict(data=elastic.ShardStatesSave(data_iter.get_state()))
  elif data_iter is not None:
    items = dict(data=grain.checkpoint.CheckpointSave(data_iter))
  else:
    items = {}
  items.update(params=ocp.args.StandardSave(state.params),
               opt_state=ocp.args.StandardSave(state.opt_state),
               meta=ocp.args.JsonSave(make_meta(step, record)))
  mngr.save(step, args=ocp.args.Composite(**items))
  return step


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract: ts.TrainState,
                  data_iter, meta: dict[str, Any] | None = None
                  ) -> tuple[ts.TrainState, dict[str, Any]]:
  """The inverse of `save_state`: (state, meta) of checkpoint `step`.

  `abstract` is a TrainState of `jax.ShapeDtypeStruct` with shardings; the
  state is restored onto them. `data_iter` (if not None) is moved to the saved
  position. `meta`: the step's meta, when the caller has read it already.
  """
  meta = restore_meta(mngr, step) if meta is None else meta
  items = dict(params=ocp.args.StandardRestore(abstract.params),
               opt_state=ocp.args.StandardRestore(abstract.opt_state))
  if isinstance(data_iter, shards.ShardedIterator):
    items['data'] = elastic.ShardStatesRestore(data_iter)
  elif data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  r = mngr.restore(step, args=ocp.args.Composite(**items))
  put = lambda x, target: jax.device_put(x, target.sharding)
  state = ts.TrainState(
      step=put(jnp.asarray(step, jnp.int32), abstract.step),
      params=r['params'], opt_state=r['opt_state'],
      guard=jax.tree.map(put, ts.fresh_guard(meta.get('skipped_updates', 0)),
                         abstract.guard))
  return state, meta


def _verify(workdir: str, step: int) -> None:
  """Checks step's files against its checksum manifest on process 0 (the
  others learn the outcome): raises ChecksumError on a mismatch."""
  error = None
  if jax.process_index() == 0:
    try:
      checksums.verify(os.path.join(checkpoint_dir(workdir), str(step)))
    except checksums.ChecksumError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    bad = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if bad and error is None:
      error = checksums.ChecksumError('process 0 found a file that does not match '
                                      'its checksum')
  if error is not None:
    raise error


FRESH_START_HINT = ('set --config.train.fresh_start=True to start from scratch '
                    'instead')


def restore_latest_good(mngr: ocp.CheckpointManager, workdir: str,
                        abstract: ts.TrainState, data_iter, check_meta=None,
                        fresh_start: bool = False
                        ) -> tuple[ts.TrainState, dict[str, Any]] | None:
  """Restores the newest checkpoint that can be read, newest first.

  Each checkpoint's JSON meta is read first and passed to `check_meta`, which may
  raise (e.g. ValueError: written by an incompatible run); that error propagates
  and nothing is touched. A checkpoint that fails to restore (truncated or
  missing files, a file that does not match the checksum recorded when it was
  saved) is moved to `WORKDIR/corrupt_checkpoints/STEP-TIME` (so its step can
  be saved again) with a warning naming what was wrong.

  Returns (state, meta), or None when there is no checkpoint. When none can be
  restored (now, or an earlier run moved every one to corrupt_checkpoints/),
  raises CheckpointError unless `fresh_start` (then None: start from scratch).
  """
  failures = []
  steps = sorted(mngr.all_steps(), reverse=True)
  quarantine = quarantine_dir(workdir)
  if not steps and not fresh_start and os.path.isdir(quarantine) and os.listdir(
      quarantine):
    raise CheckpointError(
        f'{checkpoint_dir(workdir)} has no checkpoint, and earlier runs moved '
        f'corrupt ones to {quarantine} ({", ".join(sorted(os.listdir(quarantine)))}); '
        f'refusing to start from scratch silently: {FRESH_START_HINT}.')
  for step in steps:
    try:
      meta = restore_meta(mngr, step)
    except Exception as e:  # pylint: disable=broad-except
      meta, error = None, e
    if meta is not None:
      if check_meta is not None:
        check_meta(meta)
      try:
        _verify(workdir, step)
        restored = restore_state(mngr, step, abstract, data_iter, meta)
        mngr.reload()
        return restored
      except Exception as e:  # pylint: disable=broad-except
        error = e
    failures.append(f'step {step} ({describe(error)})')
    if jax.process_index() == 0:
      os.makedirs(quarantine, exist_ok=True)
      os.replace(os.path.join(checkpoint_dir(workdir), str(step)),
                 os.path.join(quarantine, f'{step}-{int(time.time())}'))
    warnings.warn(f'checkpoint at step {step} cannot be restored ({describe(error)}); '
                  f'moved it to {quarantine} and trying the previous one.')
  if failures:
    mngr.reload()
    if fresh_start:
      warnings.warn(f'no checkpoint in {checkpoint_dir(workdir)} can be restored '
                    f'({"; ".join(failures)}); train.fresh_start: starting from '
                    'scratch.')
      return None
    raise CheckpointError(f'no checkpoint in {checkpoint_dir(workdir)} can be '
                          'restored: ' + '; '.join(failures) + f'; moved to '
                          f'{quarantine}; {FRESH_START_HINT}.')
  return None
