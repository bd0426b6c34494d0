"""Device meshes from config: axes `data`, `fsdp`, `tensor` (and `expert`).

  data    pure data parallelism (parameters replicated)
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3)
  tensor  Megatron-style tensor parallelism (heads, FFN width, vocabulary)
  expert  expert parallelism (mixture-of-experts weights split by expert; the
          batch too, so it is data parallelism for everything else); only
          present in the mesh when its size is > 1

One size may be -1: it takes the devices that are left. `dcn_data` > 1 builds a
hybrid mesh for several slices / nodes: the data axis is split across them (over
the data-centre network) and everything else stays within a slice (ICI / NVLink).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils

AXES = ('data', 'fsdp', 'tensor')
EXPERT_AXES = ('data', 'fsdp', 'expert', 'tensor')  # A mesh with expert > 1.


def resolve_shape(data: int = -1, fsdp: int = 1, tensor: int = 1,
                  num_devices: int | None = None) -> tuple[int, int, int]:
  """The (data, fsdp, tensor) sizes, with a -1 filled in; clear errors."""
  n = jax.device_count() if num_devices is None else num_devices
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh sizes data={data}, fsdp={fsdp}, tensor={tensor}: each '
                     'must be positive, and at most one may be -1.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise ValueError(f'mesh data={data} x fsdp={fsdp} x tensor={tensor}: {n} '
                       f'devices are not divisible by {known}.')
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise ValueError(f'mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = '
                     f'{math.prod(sizes)} devices, but {n} are available; use -1 for '
                     'one axis to take the rest.')
  return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, dcn_data: int = 1,
              devices=None, expert: int = 1) -> jax.sharding.Mesh:
  """A mesh over all (or the given) devices, axis types Auto (GSPMD); with
  `expert` > 1 it has a fourth axis, `expert` (before `tensor`)."""
  devices = jax.devices() if devices is None else list(devices)
  if expert != 1:
    if expert < 1 or len(devices) % expert:
      raise ValueError(f'mesh.expert={expert} does not divide the {len(devices)} '
                       'devices.')
    if dcn_data != 1:
      raise ValueError('mesh.expert > 1 with dcn_data > 1 is not supported.')
    d, f, t = resolve_shape(data, fsdp, tensor, len(devices) // expert)
    grid = mesh_utils.create_device_mesh((d, f, expert, t), devices=devices,
                                         allow_split_physical_axes=True)
    return jax.sharding.Mesh(np.asarray(grid), EXPERT_AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * 4)
  shape = resolve_shape(data, fsdp, tensor, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 3
  if dcn_data == 1:
    grid = mesh_utils.create_device_mesh(shape, devices=devices,
                                         allow_split_physical_axes=True)
  else:
    if shape[0] % dcn_data:
      raise ValueError(f'mesh data={shape[0]} is not divisible by dcn_data='
                       f'{dcn_data} (the number of slices / nodes).')
    per_slice = (shape[0] // dcn_data,) + shape[1:]
    # Granules are TPU slices where the devices span several, else processes
    # (the nodes of a GPU cluster).
    slices = {getattr(d, 'slice_index', 0) for d in devices}
    grid = mesh_utils.create_hybrid_device_mesh(
        per_slice, (dcn_data, 1, 1), devices=devices,
        process_is_granule=len(slices) != dcn_data)
  return jax.sharding.Mesh(np.asarray(grid), AXES, axis_types=auto)


def from_config(mesh_config) -> jax.sharding.Mesh:
  """`config.mesh` (data, fsdp, tensor, dcn_data, expert) -> mesh."""
  return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor,
                   mesh_config.dcn_data, expert=getattr(mesh_config, 'expert', 1))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """Devices the batch is split over (data x fsdp, x expert if present)."""
  return mesh.shape['data'] * mesh.shape['fsdp'] * dict(mesh.shape).get('expert', 1)
