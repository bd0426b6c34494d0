"""Orbax checkpoints of a workdir, and restoring them for inference.

Layout: `WORKDIR/checkpoints/STEP/{params, opt_state, data, meta}`; `meta` is JSON
(step, resolved config, model config, tokenizer, versions). Parameters and
optimizer state are separate items so inference restores parameters alone.
Checkpoints restore onto any device layout: the caller passes the target shapes
and shardings.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any, NamedTuple

import grain
import jax
import orbax.checkpoint as ocp

from dllm_jax import model as model_lib
from dllm_jax.errors import CheckpointError
from dllm_jax.data import tokenizer as tokenizer_lib
from dllm_jax.parallel import sharding as sharding_lib
from dllm_jax.training import save_guard
from dllm_jax.presets import ModelConfig


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, *, max_to_keep: int | None = 3,
                 keep_every: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """The workdir's manager: failed saves raise CheckpointSaveError; keeps the
  `max_to_keep` newest steps and every step divisible by `keep_every`."""
  # Failure handling and retention live in save_guard.py.
  return save_guard.GuardedManager(
      checkpoint_dir(workdir), options=save_guard.manager_options(
          max_to_keep=max_to_keep, keep_every=keep_every, async_save=async_save))


def on_device(abstract, device: jax.Device | None = None):
  """`jax.ShapeDtypeStruct` tree placed on one device: a restore target."""
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def fingerprint(params) -> str:
  """An exact, layout-independent digest of a parameter tree: per leaf, the
  wrapping uint32 sum of its bit patterns times (position + 1), computed where the
  arrays live (sharded or not) and combined into 16 hex digits. Equal parameters
  give equal fingerprints on any mesh; a flipped bit changes it."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

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


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter, meta: dict) -> None:
  """Starts an (async) save of the train state, data iterator state and meta."""
  items = dict(params=ocp.args.StandardSave(state.params),
               opt_state=ocp.args.StandardSave(state.opt_state),
               meta=ocp.args.JsonSave(meta))
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items))


def restore_train_state(mngr: ocp.CheckpointManager, step: int, abstract_state,
                        data_iter):
  """Restores params, optimizer state and (into `data_iter`) the data position.

  `abstract_state` is a TrainState of `jax.ShapeDtypeStruct` with shardings.
  Returns (params, opt_state).
  """
  items = dict(params=ocp.args.StandardRestore(abstract_state.params),
               opt_state=ocp.args.StandardRestore(abstract_state.opt_state))
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  r = mngr.restore(step, args=ocp.args.Composite(**items))
  return r['params'], r['opt_state']


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def _describe(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0][:300] if lines else ""}'


def restore_latest_good(mngr: ocp.CheckpointManager, workdir: str, abstract_state,
                        data_iter, check_meta=None):
  """Restores the newest checkpoint that can be read, newest first.

  Each checkpoint's JSON meta is read first and passed to `check_meta`, which may
  raise (e.g. ValueError: written by an incompatible run); that error propagates
  and nothing is touched. A checkpoint that fails to restore (truncated or
  missing files) is moved to `WORKDIR/corrupt_checkpoints/STEP-TIME` (so its step
  can be saved again) with a warning naming what was wrong.

  Returns (step, params, opt_state, meta), or None when there is no checkpoint;
  raises CheckpointError when none can be restored.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      meta = restore_meta(mngr, step)
    except Exception as e:  # pylint: disable=broad-except
      meta, error = None, e
    if meta is not None:
      if check_meta is not None:
        check_meta(meta)
      try:
        params, opt_state = restore_train_state(mngr, step, abstract_state, data_iter)
        mngr.reload()
        return step, params, opt_state, meta
      except Exception as e:  # pylint: disable=broad-except
        error = e
    failures.append(f'step {step} ({_describe(error)})')
    quarantine = os.path.join(os.path.abspath(workdir), 'corrupt_checkpoints')
    if jax.process_index() == 0:
      os.makedirs(quarantine, exist_ok=True)
      os.replace(os.path.join(checkpoint_dir(workdir), str(step)),
                 os.path.join(quarantine, f'{step}-{int(time.time())}'))
    warnings.warn(f'checkpoint at step {step} cannot be restored ({_describe(error)}); '
                  f'moved it to {quarantine} and trying the previous one.')
  if failures:
    mngr.reload()
    raise CheckpointError(f'no checkpoint in {checkpoint_dir(workdir)} can be '
                          'restored: ' + '; '.join(failures))
  return None


def _manager_with_steps(workdir: str) -> ocp.CheckpointManager:
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoint in {workdir!r} (no {path}); train one '
                            f'with: python -m launch.train --workdir={workdir}')
  mngr = ocp.CheckpointManager(path)
  if mngr.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {path}.')
  return mngr


def _restore_items(mngr: ocp.CheckpointManager, step: int | None, make_items):
  """Restores `make_items(meta)` from `step`, or from the newest readable step."""
  steps = [step] if step is not None else sorted(mngr.all_steps(), reverse=True)
  failures = []
  for s in steps:
    try:
      meta = restore_meta(mngr, s)
      items = make_items(meta)
      restored = mngr.restore(s, args=ocp.args.Composite(**items)) if items else {}
      return s, meta, restored
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'step {s} ({_describe(e)})')
      warnings.warn(f'checkpoint at step {s} cannot be restored ({_describe(e)}).')
  raise CheckpointError(f'no checkpoint in {mngr.directory} can be restored: '
                     + '; '.join(failures))


def read_meta(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The JSON meta (step, config, model config, tokenizer, versions, mesh)."""
  return _restore_items(_manager_with_steps(workdir), step, lambda meta: {})[1]


class Restored(NamedTuple):
  config: ModelConfig
  params: model_lib.Params
  tokenizer: tokenizer_lib.ByteTokenizer


def restore_for_inference(workdir: str, *, step: int | None = None,
                          device: jax.Device | None = None,
                          dtype: str | None = None, shardings=None) -> Restored:
  """Restores the latest (or given) checkpoint of `workdir` on one device.

  Works whatever mesh wrote it. Only the parameters are read, not the optimizer
  state. Without `step`, an unreadable newest checkpoint is skipped (with a
  warning) for the previous one. `dtype` overrides the compute dtype.
  `shardings` (a tree like the parameters, e.g. from
  `parallel.sharding.param_shardings`) restores onto a mesh instead.

  Returns:
    (model config, params, tokenizer).
  """
  def model_config(meta):
    model_cfg = ModelConfig(**meta['model_config'])
    return model_cfg if dtype is None else dataclasses.replace(model_cfg, dtype=dtype)

  def items(meta):
    abstract = model_lib.abstract_params(model_config(meta))
    abstract = (on_device(abstract, device) if shardings is None else
                sharding_lib.with_shardings(abstract, shardings))
    return {'params': ocp.args.StandardRestore(abstract)}

  _, meta, restored = _restore_items(_manager_with_steps(workdir), step, items)
  return Restored(model_config(meta), restored['params'],
                  tokenizer_lib.from_dict(meta['tokenizer']))
