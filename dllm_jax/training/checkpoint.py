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
from typing import Any, NamedTuple

import grain
import jax
import orbax.checkpoint as ocp

import dllm_jax
from dllm_jax import model as model_lib
from dllm_jax.data import tokenizer as tokenizer_lib
from dllm_jax.presets import ModelConfig


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 async_save: bool = True) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
          create=True))


def make_meta(step: int, config: dict, model_cfg: ModelConfig,
              tokenizer: tokenizer_lib.ByteTokenizer) -> dict[str, Any]:
  return {'step': int(step), 'config': config,
          'model_config': dataclasses.asdict(model_cfg),
          'tokenizer': tokenizer.to_dict(),
          'dllm_jax_version': dllm_jax.__version__, 'jax_version': jax.__version__}


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
  Returns (params, opt_state, meta).
  """
  items = dict(params=ocp.args.StandardRestore(abstract_state.params),
               opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
               meta=ocp.args.JsonRestore())
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  r = mngr.restore(step, args=ocp.args.Composite(**items))
  return r['params'], r['opt_state'], r['meta']


def _latest_step(workdir: str) -> tuple[ocp.CheckpointManager, int]:
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoint in {workdir!r} (no {path}); train one '
                            f'with: python -m launch.train --workdir={workdir}')
  mngr = ocp.CheckpointManager(path)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {path}.')
  return mngr, step


def read_meta(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The JSON meta (config, model config, tokenizer, versions) of a checkpoint."""
  mngr, latest = _latest_step(workdir)
  step = latest if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


class Restored(NamedTuple):
  config: ModelConfig
  params: model_lib.Params
  tokenizer: tokenizer_lib.ByteTokenizer


def restore_for_inference(workdir: str, *, step: int | None = None,
                          device: jax.Device | None = None,
                          dtype: str | None = None) -> Restored:
  """Restores the latest (or given) checkpoint of `workdir` on one device.

  Works whatever mesh wrote it. Only the parameters are read, not the optimizer
  state. `dtype` overrides the compute dtype (e.g. 'bfloat16').

  Returns:
    (model config, params, tokenizer).
  """
  mngr, latest = _latest_step(workdir)
  step = latest if step is None else step
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  model_cfg = ModelConfig(**meta['model_config'])
  if dtype is not None:
    model_cfg = dataclasses.replace(model_cfg, dtype=dtype)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      model_lib.abstract_params(model_cfg))
  params = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))['params']
  return Restored(model_cfg, params, tokenizer_lib.from_dict(meta['tokenizer']))
