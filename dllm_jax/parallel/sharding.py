"""The one table of logical axis names -> mesh axes, and what is derived from it.

Parameters, optimizer state and the main activations are named with logical
axes (`batch`, `embed`, `heads`, `mlp`, `vocab`, ...): each model family says
which of its parameters has which (`Family.param_axes`), and `LOGICAL_RULES`
maps the names to the mesh axes of `parallel/mesh.py`. Nothing else names a
mesh axis. A
logical axis whose mesh axes do not divide the array's dimension is left
unsharded (e.g. a batch of 1 in the sampler).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

# logical axis -> mesh axis (or axes, or None: replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # Activations' batch: every data-parallel device (`expert` is one too).
    'batch': ('data', 'fsdp', 'expert'),
    'length': None,
    'act_embed': None,  # Activations' model dimension.
    'embed': 'fsdp',  # Parameters' model dimension: sharded by FSDP.
    'heads': 'tensor',  # Attention heads x head dim (q/k/v out, attn_out in).
    'head_dim': None,
    'mlp': 'tensor',  # FFN width.
    'vocab': 'tensor',  # Embedding rows, output-head columns, logits.
    'norm': None,  # RMSNorm weights.
    'experts': 'expert',  # Mixture-of-experts weights' expert dimension.
}

def spec(logical: Sequence[str | None], shape: Sequence[int] | None = None,
         mesh: Any = None, rules: dict | None = None) -> P:
  """Logical axes -> PartitionSpec; with `mesh`, mesh axes it lacks (e.g.
  `expert` in a mesh without one) are dropped, and with `shape` too, axes that
  do not divide their dimension."""
  rules = LOGICAL_RULES if rules is None else rules
  out = []
  for i, name in enumerate(logical):
    axes = rules[name] if name is not None else None
    if axes is not None and mesh is not None:
      kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes)
                   if a in mesh.axis_names)
      axes = None if not kept else kept[0] if len(kept) == 1 else kept
    if axes is not None and shape is not None and mesh is not None:
      size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      if shape[i] % size:
        axes = None
    out.append(axes)
  return P(*out)


def _key_name(k) -> Any:
  return getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))


def param_logical_axes(path: Sequence[Any], ndim: int,
                       param_axes) -> tuple[str | None, ...]:
  """Logical axes of the parameter at `path` (keys of the params dict), by the
  model family's `param_axes` (`models.of(config).param_axes`)."""
  return tuple(param_axes(tuple(_key_name(k) for k in path), ndim))


def param_shardings(abstract_params, mesh, param_axes) -> Any:
  """NamedSharding per parameter (tree like `abstract_params`); `param_axes` is
  the model family's (`models.of(config).param_axes`)."""
  def one(path, x):
    axes = param_logical_axes(path, x.ndim, param_axes)
    return NamedSharding(mesh, spec(axes, x.shape, mesh))
  return jax.tree_util.tree_map_with_path(one, abstract_params)


def state_shardings(abstract_state, mesh, param_axes) -> Any:
  """Shardings for a train state: parameters by the rules; optimizer moments
  like the parameter whose path they end with; everything else replicated."""
  params = getattr(abstract_state, 'params', abstract_state)
  by_path = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    by_path[tuple(_key_name(k) for k in path)] = (
        x.shape, param_logical_axes(path, x.ndim, param_axes))

  def one(path, x):
    names = tuple(_key_name(k) for k in path)
    for start in range(len(names)):
      hit = by_path.get(names[start:])
      if hit is not None and hit[0] == x.shape:
        return NamedSharding(mesh, spec(hit[1], x.shape, mesh))
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(one, abstract_state)


def with_shardings(abstract, shardings) -> Any:
  """ShapeDtypeStruct tree carrying `shardings` (restore / compile targets)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis over every data-parallel device."""
  return NamedSharding(mesh, spec(('batch',), mesh=mesh))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation, by logical axes; a no-op unless a
  mesh is set (`jax.set_mesh`) while tracing."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, spec(logical, x.shape, mesh))
