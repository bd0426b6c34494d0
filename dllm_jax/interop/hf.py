"""Hugging Face safetensors <-> dllm_jax parameters, for any model family.

A family says how its parameters are named in its released checkpoints
(`Family.hf_name_map(config)`: Hugging Face name, parameter path, transpose?);
this module reads and writes with that map. Sharded checkpoints list their files
in `model.safetensors.index.json`.

Reading is memory-mapped and tensor by tensor: each tensor goes straight to its
device placement (`sharding_for(path, shape)`, default: one device), so the
host never holds the whole model. Only safetensors (data) are read: no pickle.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterator

import jax
import numpy as np

from dllm_jax import models
from dllm_jax.models.base import HFTensor

INDEX_FILE = 'model.safetensors.index.json'


def name_map(cfg) -> Iterator[tuple[str, tuple, bool] | models.base.HFTensor]:
  """(Hugging Face name, dllm_jax path, transpose?) for every parameter, or an
  `HFTensor` (several tensors -> one parameter)."""
  family = models.of(cfg)
  if family.hf_name_map is None:
    raise ValueError(f'model family {family.name!r} has no Hugging Face layout.')
  return family.hf_name_map(cfg)


def _weight_files(path: str) -> dict[str, str]:
  """Tensor name -> file, from the index JSON or the single safetensors file."""
  index = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  single = os.path.join(path, 'model.safetensors')
  if os.path.isfile(single):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(single, framework='numpy') as f:
      return {k: single for k in f.keys()}
  raise FileNotFoundError(f'no {INDEX_FILE} or model.safetensors in {path!r}.')


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_params(path: str, cfg, *,
                sharding_for: Callable[[tuple, tuple], jax.sharding.Sharding] | None = None,
                dtype: str | None = None) -> models.Params:
  """Reads a Hugging Face safetensors directory into dllm_jax parameters.

  Args:
    path: directory with `model.safetensors.index.json` and its shards (or one
      `model.safetensors`).
    cfg: the model config the weights are for (e.g. `get_preset('llada_8b')`).
    sharding_for: (dllm_jax path, shape) -> where that parameter lives; default
      the first device.
    dtype: parameter dtype (default `cfg.param_dtype`; LLaDA ships bf16).

  Returns:
    the parameter tree of `init_params(cfg, ...)`, each array placed as it loads.
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  files = _weight_files(path)
  expected = {p: s.shape for p, s in _flatten(models.abstract_params(cfg))}
  target = np.dtype(jax.numpy.dtype(dtype or cfg.param_dtype))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params: dict = {}
  handles = {}
  def read(hf_name):
    if hf_name not in files:
      raise ValueError(f'{path}: tensor {hf_name!r} is missing (is this a '
                       f'{models.of(cfg).name} checkpoint of the config\'s shape?).')
    fname = files[hf_name]
    if fname not in handles:
      handles[fname] = safe_open(fname, framework='numpy').__enter__()
    return handles[fname].get_tensor(hf_name)

  try:
    for entry in name_map(cfg):
      if isinstance(entry, HFTensor):
        hf_name, our_path = entry.hf_names[0], entry.path
        arrays = [read(n) for n in entry.hf_names]
        odd = [(n, a.shape) for n, a in zip(entry.hf_names, arrays)
               if a.shape != arrays[0].shape]
        if odd:
          raise ValueError(f'{odd[0][0]}: shape {odd[0][1]} differs from '
                           f'{hf_name}\'s {arrays[0].shape}.')
        array = entry.to_ours(arrays)
        dest = np.dtype(entry.dtype) if entry.dtype else target
      else:
        hf_name, our_path, transpose = entry
        array = read(hf_name)
        array = array.T if transpose else array
        dest = target
      if array.shape != expected[our_path]:
        raise ValueError(f'{hf_name}: shape {array.shape} (as dllm_jax) does not match '
                         f'the config\'s {expected[our_path]}.')
      sharding = sharding_for(our_path, array.shape) if sharding_for else device
      _set(params, our_path, jax.device_put(array.astype(dest), sharding))
  finally:
    for h in handles.values():
      h.__exit__(None, None, None)
  return params


def _flatten(tree: dict, prefix: tuple = ()) -> Iterator[tuple[tuple, object]]:
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def save_params(params: models.Params, cfg, path: str, *,
                max_shard_bytes: int = 5 * 2**30, dtype: str | None = None) -> None:
  """Writes dllm_jax parameters in the family's Hugging Face layout: safetensors
  shards of at most `max_shard_bytes` plus `model.safetensors.index.json`.
  `dtype` (e.g. 'bfloat16') casts the weights; default: each parameter's own
  dtype (the float32 router and expert bias stay float32 either way)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  flat = dict(_flatten(params))
  cast = lambda a: a if dtype is None else a.astype(np.dtype(jax.numpy.dtype(dtype)))
  shards, current, size = [], {}, 0
  for entry in name_map(cfg):
    if isinstance(entry, HFTensor):
      value = np.asarray(jax.device_get(flat[entry.path]))
      value = value.astype(np.dtype(entry.dtype)) if entry.dtype else cast(value)
      tensors = zip(entry.hf_names, entry.to_hf(value))
    else:
      hf_name, our_path, transpose = entry
      array = cast(np.asarray(jax.device_get(flat[our_path])))
      tensors = [(hf_name, array.T if transpose else array)]
    for hf_name, array in tensors:
      array = np.ascontiguousarray(array)
      if current and size + array.nbytes > max_shard_bytes:
        shards.append(current)
        current, size = {}, 0
      current[hf_name] = array
      size += array.nbytes
  shards.append(current)
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    fname = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
    save_file(shard, os.path.join(path, fname), metadata={'format': 'pt'})
    for name, array in shard.items():
      weight_map[name] = fname
      total += array.nbytes
  with open(os.path.join(path, INDEX_FILE), 'w') as f:
    json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=1)
