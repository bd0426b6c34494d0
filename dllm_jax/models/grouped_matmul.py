"""Routed SwiGLU experts on one device, by several grouped matmuls, and the
dispatcher that picks one for the backend and shape.

  y = routed_ffn(x, idx, w, gate_up, down, impl='auto')  # x [N, D] -> [N, D] f32

Every path computes y[n] = sum_j w[n, j] * expert_{idx[n, j]}(x[n]) for the
N * k (row, expert) assignments, dropless, with gradients:

- 'ragged': assignments sorted by expert, one `jax.lax.ragged_dot` per matmul.
  Native on GPU/TPU; on CPU XLA expands it into a dense dot over every expert.
- 'capacity': assignments sorted by expert into C slots per expert ([E, C, D],
  C static, about 1.25x the mean load) and one batched matmul over the experts'
  weights in place; the assignments past an expert's C slots (rare) go through
  a loop over row tiles of only the experts that overflowed (a tile that holds
  nothing is skipped by `lax.cond`). Cost follows E * C + the overflow, not
  N * E. The fastest measured on CPU at every MoE shape tried
  (`python -m launch.bench_moe`).
- 'dense': every expert on every row, weighted by the routing (zero for the
  unchosen): N * E rows of work; the reference the tests compare against.

`choose_impl` is the dispatcher: 'capacity' on CPU, 'ragged' where XLA lowers
it natively (GPU, TPU). Expert parallelism (models/moe.py) keeps 'ragged' on
each device's local experts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLS = ('auto', 'ragged', 'capacity', 'dense')
CAPACITY_FACTOR = 1.25 # 'capacity': slots per expert / mean assignments per expert.
TILE = 8  # 'capacity': rows per overflow tile (a multiple of 8: the f32 sublane).


def choose_impl(impl: str = 'auto', backend: str | None = None) -> str:
  """The path `routed_ffn` takes: `impl` itself unless 'auto'; 'auto' is
  'capacity' on CPU and 'ragged' on GPU/TPU (native grouped GEMM lowering)."""
  if impl not in IMPLS:
    raise ValueError(f'moe_impl={impl!r} is not one of {IMPLS}.')
  if impl != 'auto':
    return impl
  backend = backend or jax.default_backend()
  return 'capacity' if backend == 'cpu' else 'ragged'


def combine(y_assign: jax.Array, w: jax.Array, n: int, k: int) -> jax.Array:
  """Weighted sum over each row's k expert outputs y_assign [N * k, D] (row
  major: assignment n * k + j) with weights w [N, k], in float32 -> [N, D]."""
  y = y_assign.reshape(n, k, -1).astype(jnp.float32)
  return jnp.einsum('nkd,nk->nd', y, w.astype(jnp.float32))


def ragged_swiglu(x: jax.Array, sizes: jax.Array, gate_up: jax.Array,
                  down: jax.Array) -> jax.Array:
  """Grouped SwiGLU: rows of x [M, D] in consecutive groups of `sizes` [G]
  through experts gate_up [G, D, 2, I] (gate, then up), down [G, I, D] ->
  [M, D]. Rows past sum(sizes) give zeros."""
  g, d, _, i = gate_up.shape
  gu = jax.lax.ragged_dot(x, gate_up.reshape(g, d, 2 * i).astype(x.dtype), sizes)
  gu = gu.reshape(-1, 2, i)
  return jax.lax.ragged_dot(jax.nn.silu(gu[:, 0]) * gu[:, 1], down.astype(x.dtype),
                            sizes)


def _sort(idx: jax.Array, e: int):
  """(order [M]: assignments sorted by expert, their experts [M], sizes [E],
  first sorted position of each expert [E])."""
  flat = idx.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
  return order, flat[order], sizes, jnp.cumsum(sizes) - sizes


def ragged_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
               down: jax.Array) -> jax.Array:
  """'ragged': x [N, D], idx/w [N, k], gate_up [E, D, 2, I], down [E, I, D] ->
  [N, D] float32."""
  n, k = idx.shape
  order, _, sizes, _ = _sort(idx, gate_up.shape[0])
  ys = ragged_swiglu(x[order // k], sizes, gate_up, down)
  return combine(jnp.zeros_like(ys).at[order].set(ys), w, n, k)


def dense_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
              down: jax.Array) -> jax.Array:
  """'dense': every expert on every row (zero weight for the unchosen); shapes
  as `ragged_ffn`."""
  e = gate_up.shape[0]
  gu = jnp.einsum('nd,edci->ceni', x, gate_up.astype(x.dtype))
  h = jax.nn.silu(gu[0]) * gu[1]
  y = jnp.einsum('eni,eid->end', h, down.astype(x.dtype)).astype(jnp.float32)
  dense_w = jnp.sum(jax.nn.one_hot(idx, e, dtype=jnp.float32) *
                    w.astype(jnp.float32)[..., None], 1)
  return jnp.einsum('end,ne->nd', y, dense_w)


def default_capacity(m: int, e: int, factor: float = CAPACITY_FACTOR) -> int:
  """Slots per expert for m assignments over e experts: factor x the mean,
  rounded up to a multiple of 8, at most m."""
  return min(m, max(8, 8 * math.ceil(factor * m / e / 8)))


def capacity_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
                 down: jax.Array, *, capacity: int | None = None,
                 tile: int = TILE) -> jax.Array:
  """'capacity': shapes as `ragged_ffn`. `capacity` slots per expert (default
  `default_capacity`), overflow rows in tiles of `tile` rows (module doc)."""
  n, k = idx.shape
  e, d, _, i = gate_up.shape
  m = n * k
  c = capacity or default_capacity(m, e)
  tile = min(tile, c)  # Then the overflow of one expert is the worst case.
  order, expert, sizes, starts = _sort(idx, e)
  rank = jnp.arange(m) - starts[expert]
  xs = x[order // k]  # [M, D]: rows sorted by expert.
  gu_w = gate_up.reshape(e, d, 2 * i).astype(x.dtype)
  dn_w = down.astype(x.dtype)

  def swiglu(rows, gu, dn, spec):  # spec: the einsum subscripts of one matmul.
    h = jnp.einsum(spec, rows, gu)
    return jnp.einsum(spec, jax.nn.silu(h[..., :i]) * h[..., i:], dn)

  slots = jnp.zeros((e, c, d), x.dtype).at[expert, rank].set(xs, mode='drop')
  ys = swiglu(slots, gu_w, dn_w, 'ecd,edf->ecf').at[expert, rank].get(
      mode='fill', fill_value=0)  # [M, D]; overflow rows still zero.
  n_tiles = math.ceil((m - c) / tile) if m > c else 0  # Static bound (all in one expert).
  if n_tiles:
    over = jnp.maximum(sizes - c, 0)
    tiles = (over + tile - 1) // tile  # [E] overflow tiles of each expert.
    tile_end = jnp.cumsum(tiles)
    xs_pad = jnp.concatenate([xs, jnp.zeros((tile, d), xs.dtype)])
    ys = jnp.concatenate([ys, jnp.zeros((tile, d), ys.dtype)])

    def body(t, ys):
      g = jnp.minimum(jnp.searchsorted(tile_end, t, side='right'), e - 1)
      s = starts[g] + c + (t - tile_end[g] + tiles[g]) * tile

      def run(ys):
        y = swiglu(jax.lax.dynamic_slice_in_dim(xs_pad, s, tile), gu_w[g], dn_w[g],
                   'td,df->tf')
        old = jax.lax.dynamic_slice_in_dim(ys, s, tile)
        valid = (s + jnp.arange(tile) < starts[g] + sizes[g])[:, None]
        return jax.lax.dynamic_update_slice_in_dim(ys, jnp.where(valid, y, old), s, 0)

      return jax.lax.cond(t < tile_end[-1], run, lambda ys: ys, ys)

    ys = jax.lax.fori_loop(0, n_tiles, body, ys)[:m]
  return combine(jnp.zeros_like(ys).at[order].set(ys), w, n, k)


PATHS = {'ragged': ragged_ffn, 'capacity': capacity_ffn, 'dense': dense_ffn}


def routed_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
               down: jax.Array, *, impl: str = 'auto') -> jax.Array:
  """Routed experts of rows x [N, D] chosen by idx [N, k] (weights w [N, k]):
  gate_up [E, D, 2, I], down [E, I, D] -> [N, D] float32, by the path
  `choose_impl(impl)`."""
  return PATHS[choose_impl(impl)](x, idx, w, gate_up, down)
