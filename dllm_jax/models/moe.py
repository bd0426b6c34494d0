"""Mixture-of-experts feed-forward: routers, dropless grouped dispatch, expert
parallelism.

  idx, w, probs = route(logits32, router=..., ...)     # [N, k], [N, k], [N, E]
  y, dropped = experts_ffn(x, idx, w, gate_up, down)   # x [N, D] -> [N, D]

Dispatch is dropless: the N * k (token, expert) assignments are sorted by
expert and every expert's rows go through a grouped matrix multiply, the path
chosen for the backend (models/grouped_matmul.py: `jax.lax.ragged_dot` on
GPU/TPU, slots per expert + an overflow loop on CPU); no token is dropped.

On a mesh with an `expert` axis of size > 1, the experts' weights are split over
it ([E, ...] on 'experts' -> 'expert', parallel/sharding.py) and
`experts_ffn` exchanges tokens with two all-to-alls inside a `jax.shard_map`:
each device sorts its assignments by destination shard, sends them, runs its
local experts on what it received (one grouped matmul) and sends the results
back. The send buffers hold every assignment (dropless, worst case: all go to
one shard); `capacity_factor` > 0 shrinks them to that multiple of the average
and drops (counts) the overflow.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dllm_jax.models import grouped_matmul as gm
from dllm_jax.parallel import sharding as sharding_lib

ROUTERS = ('softmax', 'sigmoid')


def route(logits: jax.Array, *, router: str, top_k: int,
          bias: jax.Array | None = None, n_group: int = 1, topk_group: int = 1,
          norm_topk_prob: bool = False, scaling: float = 1.0):
  """Chooses experts from router logits (float32).

  Args:
    logits: [N, E] float32, x @ router kernel.
    router: 'softmax' (LLaDA-MoE: weights are the softmax probabilities of the
      chosen experts) or 'sigmoid' (LLaDA2: sigmoid scores).
    bias: [E] or None: a per-expert bias added to the scores. With 'sigmoid'
      it only chooses (LLaDA2's load-balancing bias: the weights use the
      unbiased scores); with 'softmax' the biased probabilities both choose
      and are the weights (LLaDA-MoE's `expert_bias`).
    n_group, topk_group: group-limited choice: experts in `n_group` groups, a
      group scored by the sum of its two best (biased) scores, only the best
      `topk_group` groups eligible.
    norm_topk_prob: weights divided by their sum; `scaling` multiplies them.

  Returns:
    (expert ids [N, k] int32, weights [N, k] float32, scores [N, E] float32).
  """
  if router not in ROUTERS:
    raise ValueError(f'router={router!r} is not one of {ROUTERS}.')
  logits = logits.astype(jnp.float32)
  scores = jax.nn.softmax(logits, -1) if router == 'softmax' else jax.nn.sigmoid(logits)
  biased = scores if bias is None else scores + jax.lax.stop_gradient(
      bias.astype(jnp.float32))
  choice = biased
  if n_group > 1:
    n, e = choice.shape
    grouped = choice.reshape(n, n_group, e // n_group)
    group_score = jnp.sum(jax.lax.top_k(grouped, min(2, e // n_group))[0], -1)
    _, keep = jax.lax.top_k(group_score, topk_group)  # [N, topk_group]
    allowed = jnp.zeros((n, n_group), bool).at[jnp.arange(n)[:, None], keep].set(True)
    choice = jnp.where(allowed[:, :, None], grouped, -jnp.inf).reshape(n, e)
  _, idx = jax.lax.top_k(choice, top_k)
  w = jnp.take_along_axis(biased if router == 'softmax' else scores, idx, -1)
  if norm_topk_prob:
    w = w / (jnp.sum(w, -1, keepdims=True) + 1e-20)
  return idx.astype(jnp.int32), w * scaling, scores


_swiglu_grouped = gm.ragged_swiglu
_combine = gm.combine
grouped_ffn = gm.ragged_ffn  # Sort + ragged_dot (grouped_matmul.py: every path).
dense_reference = gm.dense_ffn  # Every expert on every token: the slow reference.


def _ep_local(x, idx, w, gate_up, down, *, ep, capacity, tensor_axis):
  """One device's part of expert-parallel dispatch (inside shard_map)."""
  n, k = idx.shape
  e_loc, d = gate_up.shape[0], x.shape[-1]
  flat = idx.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  sorted_e = flat[order]
  dest = sorted_e // e_loc
  counts = jnp.bincount(dest, length=ep)
  rank = jnp.arange(n * k) - (jnp.cumsum(counts) - counts)[dest]
  dropped = jnp.sum(rank >= capacity)
  send_x = jnp.zeros((ep, capacity, d), x.dtype).at[dest, rank].set(
      x[order // k], mode='drop')
  send_e = jnp.full((ep, capacity), e_loc, jnp.int32).at[dest, rank].set(
      sorted_e % e_loc, mode='drop')
  recv_x = jax.lax.all_to_all(send_x, 'expert', 0, 0, tiled=True)
  recv_e = jax.lax.all_to_all(send_e, 'expert', 0, 0, tiled=True).reshape(-1)
  o2 = jnp.argsort(recv_e, stable=True)  # Padding (id e_loc) sorts last.
  sizes = jnp.bincount(recv_e, length=e_loc + 1)[:e_loc].astype(jnp.int32)
  ys = _swiglu_grouped(recv_x.reshape(-1, d)[o2], sizes, gate_up, down)
  if tensor_axis is not None:  # Each tensor shard holds a slice of the FFN width.
    ys = jax.lax.psum(ys, tensor_axis)
  y = jnp.zeros_like(ys).at[o2].set(ys).reshape(ep, capacity, d)
  back = jax.lax.all_to_all(y, 'expert', 0, 0, tiled=True)
  got = back.at[dest, rank].get(mode='fill', fill_value=0)  # Dropped: zeros.
  y_assign = jnp.zeros_like(got).at[order].set(got)
  return _combine(y_assign, w, n, k), dropped[None]


def _expert_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or 'expert' not in mesh.axis_names or mesh.shape['expert'] == 1:
    return None
  return mesh


def experts_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
                down: jax.Array, *, capacity_factor: float = 0.0, impl: str = 'auto'):
  """Routed experts of tokens x [N, D] -> (y [N, D] float32, dropped []).

  One device (or a mesh without an `expert` axis): `grouped_matmul.routed_ffn`
  by the path `impl` ('auto': chosen for the backend). On a mesh with an
  `expert` axis: expert parallelism with all-to-all (module doc).
  """
  mesh = _expert_mesh()
  if mesh is None:
    return gm.routed_ffn(x, idx, w, gate_up, down, impl=impl), jnp.zeros((), jnp.int32)
  ep = mesh.shape['expert']
  if gate_up.shape[0] % ep:
    raise ValueError(f'{gate_up.shape[0]} experts are not divisible by the expert-'
                     f'parallel size mesh.expert={ep}.')
  rule = sharding_lib.LOGICAL_RULES['batch']
  tok_axes = tuple(a for a in ((rule,) if isinstance(rule, str) else rule)
                   if a in mesh.axis_names and mesh.shape[a] > 1)
  n_shards = math.prod(mesh.shape[a] for a in tok_axes)
  if not tok_axes or x.shape[0] % n_shards:
    tok_axes, n_shards = None, 1  # E.g. a sampler batch of 1: tokens replicated.
  tp = mesh.shape.get('tensor', 1) if 'tensor' in mesh.axis_names else 1
  tensor_axis = 'tensor' if tp > 1 and gate_up.shape[3] % tp == 0 else None
  n_k = (x.shape[0] // n_shards) * idx.shape[1]
  capacity = n_k if capacity_factor <= 0 else min(
      n_k, max(1, math.ceil(capacity_factor * n_k / ep)))
  tok = P(tok_axes, None)
  fn = jax.shard_map(
      functools.partial(_ep_local, ep=ep, capacity=capacity, tensor_axis=tensor_axis),
      mesh=mesh,
      in_specs=(tok, tok, tok, P('expert', None, None, tensor_axis),
                P('expert', tensor_axis, None)),
      out_specs=(tok, P(tok_axes)), check_vma=False)
  y, dropped = fn(x, idx, w, gate_up, down)
  return y, jnp.sum(dropped)
