"""A run's workdir on disk, read by training and inference alike.

Layout: `WORKDIR/checkpoints/STEP/{params, opt_state, data, meta}` (Orbax),
`WORKDIR/corrupt_checkpoints/` (checkpoints that failed to restore), each
step's `dllm_checksums.json` (`checksums.py`: verified on every restore),
`WORKDIR/tensorboard/` and `WORKDIR/batches.txt` (optional). `meta` is JSON:
step, resolved run config, model config, tokenizer, versions, mesh.
Parameters and optimizer state are separate items, so inference restores the
parameters alone, onto any device layout (the caller gives target shardings).

Nothing here imports `dllm_jax.training`: the package root and the samplers use
this module, training's `checkpoint` builds on it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from dllm_jax import models
from dllm_jax import tokenizers as tokenizer_lib
from dllm_jax.training import checksums
from dllm_jax.errors import CheckpointError
from dllm_jax.parallel import sharding as sharding_lib


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def quarantine_dir(workdir: str) -> str:
  """Where checkpoints that failed to restore are moved."""
  return os.path.join(os.path.abspath(workdir), 'corrupt_checkpoints')


def on_device(abstract, device: jax.Device | None = None):
  """`jax.ShapeDtypeStruct` tree placed on one device: a restore target."""
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def describe(e: Exception) -> str:
  """An exception in one short line (restore failures are long)."""
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0][:300] if lines else ""}'


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
      # The files read, against the checksums recorded when they were saved.
      checksums.verify(os.path.join(os.fspath(mngr.directory), str(s)),
                       ('meta', *items))
      restored = mngr.restore(s, args=ocp.args.Composite(**items)) if items else {}
      return s, meta, restored
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'step {s} ({describe(e)})')
      warnings.warn(f'checkpoint at step {s} cannot be restored ({describe(e)}).')
  raise CheckpointError(f'no checkpoint in {mngr.directory} can be restored: '
                        + '; '.join(failures))


def read_meta(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The JSON meta (step, config, model config, tokenizer, versions, mesh)."""
  return _restore_items(_manager_with_steps(workdir), step, lambda meta: {})[1]


class Restored(NamedTuple):
  config: object  # The model config (its family's config class).
  params: models.Params
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
    model_cfg = models.config_from_dict(meta['model_config'])
    return model_cfg if dtype is None else dataclasses.replace(model_cfg, dtype=dtype)

  def items(meta):
    abstract = models.abstract_params(model_config(meta))
    abstract = (on_device(abstract, device) if shardings is None else
                sharding_lib.with_shardings(abstract, shardings))
    return {'params': ocp.args.StandardRestore(abstract)}

  _, meta, restored = _restore_items(_manager_with_steps(workdir), step, items)
  return Restored(model_config(meta), restored['params'],
                  tokenizer_lib.from_dict(meta['tokenizer']))
