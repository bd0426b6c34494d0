"""Routed SwiGLU experts on one device, by several grouped matmuls, and the
dispatcher that picks one for the backend.

  y = routed_ffn(x, idx, w, gate_up, down, impl='auto')  # x [N, D] -> [N, D] f32

Every path computes y[n] = sum_j w[n, j] * expert_{idx[n, j]}(x[n]) for the
N * k (row, expert) assignments, dropless, with gradients:

- 'ragged': assignments sorted by expert, one `jax.lax.ragged_dot` per matmul.
  Native on GPU/TPU; on CPU XLA expands it into a dense dot over every expert.
- 'capacity': assignments sorted by expert into C slots per expert ([E, C, D],
  C static, about 1.25x the mean load) and one batched matmul over the experts'
  weights in place; the assignments past an expert's C slots (rare) go through
  a `while_loop` over the row tiles that exist, each tile through its expert
  (backward: the same tiles again, custom VJP). Cost follows E * C + the
  overflow, not N * E. Rows move by gathers whose gradients are gathers too
  (`take_rows`), not the scatter-adds autodiff makes (slow on CPU). The
  fastest path measured on CPU at every MoE shape tried, forward and backward
  (`python -m launch.bench_moe`).
- 'dense': every expert on every row, weighted by the routing (zero for the
  unchosen): N * E rows of work; the reference the tests compare against.

`choose_impl` is the dispatcher: 'capacity' on CPU, 'ragged' where XLA lowers
it natively (GPU, TPU). Expert parallelism (models/moe.py) keeps 'ragged' on
each device's local experts.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

IMPLS = ('auto', 'ragged', 'capacity', 'dense')
CAPACITY_FACTOR = 1.25  # 'capacity': slots per expert / mean assignments per expert.
TILE = 8  # 'capacity': fewest rows per overflow tile.


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
  """(order [M]: assignments sorted by expert, its inverse [M], their experts
  [M], sizes [E], first sorted position of each expert [E])."""
  flat = idx.reshape(-1)
  order = jnp.argsort(flat, stable=True).astype(jnp.int32)
  inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=jnp.int32))
  sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
  return order, inverse, flat[order], sizes, jnp.cumsum(sizes) - sizes


@jax.custom_vjp
def take_rows(src: jax.Array, rows: jax.Array, valid: jax.Array, back: jax.Array,
              back_valid: jax.Array) -> jax.Array:
  """out[r] = src[rows[r]] where valid[r], else 0, for a one-to-one map of rows
  (a permutation, or rows into/out of slots): `back`/`back_valid` is the map
  the other way (src row j came from out row back[j]). The gradient is then a
  gather too, not the scatter-add autodiff makes of a gather (slow on CPU)."""
  del back, back_valid
  return jnp.where(valid[:, None], jnp.take(src, rows, 0, mode='clip'), 0)


def _take_rows_fwd(src, rows, valid, back, back_valid):
  return take_rows(src, rows, valid, back, back_valid), (rows, valid, back, back_valid)


def _take_rows_bwd(res, g):
  rows, valid, back, back_valid = res
  return (take_rows(g, back, back_valid, rows, valid), None, None, None, None)


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def _permute(src: jax.Array, rows: jax.Array, back: jax.Array) -> jax.Array:
  ok = jnp.ones(rows.shape, bool)
  return take_rows(src, rows, ok, back, ok)


def _by_assignment(x: jax.Array, k: int) -> jax.Array:
  """x [N, D] -> [N * k, D], row n * k + j = x[n]."""
  return jnp.broadcast_to(x[:, None], (x.shape[0], k, x.shape[1])).reshape(-1, x.shape[1])


def ragged_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
               down: jax.Array) -> jax.Array:
  """'ragged': x [N, D], idx/w [N, k], gate_up [E, D, 2, I], down [E, I, D] ->
  [N, D] float32."""
  n, k = idx.shape
  order, inverse, _, sizes, _ = _sort(idx, gate_up.shape[0])
  ys = ragged_swiglu(_permute(_by_assignment(x, k), order, inverse), sizes, gate_up,
                     down)
  return combine(_permute(ys, inverse, order), w, n, k)


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
  rounded up to a multiple of 4, at most m (a multiple of 8 measured slower
  on CPU: 16 slots for a mean of 8 cost 1.9 ms where 12 cost 1.0)."""
  return min(m, 4 * math.ceil(factor * m / e / 4))


def _swiglu_tile(x: jax.Array, gu: jax.Array, dn: jax.Array) -> jax.Array:
  """x [T, D] through one expert: gu [D, 2I] (gate, up), dn [I, D]."""
  h = x @ gu
  i = dn.shape[0]
  return (jax.nn.silu(h[:, :i]) * h[:, i:]) @ dn


def _tile_at(t, starts, sizes, c: int, tile: int):
  """Overflow tile t: (expert, first sorted row, which of its rows are the
  expert's), the tiles in expert order, each expert's rows past its c slots."""
  tiles = (jnp.maximum(sizes - c, 0) + tile - 1) // tile
  tile_end = jnp.cumsum(tiles)
  g = jnp.minimum(jnp.searchsorted(tile_end, t, side='right'), sizes.shape[0] - 1)
  s = starts[g] + c + (t - tile_end[g] + tiles[g]) * tile
  return g, s, s + jnp.arange(tile) < starts[g] + sizes[g]


def _n_tiles(sizes, c: int, tile: int) -> jax.Array:
  return jnp.sum((jnp.maximum(sizes - c, 0) + tile - 1) // tile)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _overflow(xs, gu_w, dn_w, starts, sizes, c: int, tile: int):
  """The sorted rows xs [M + tile, D] (padded) that sit past their expert's c
  slots, through their expert, in tiles of `tile` rows; a `while_loop` over the
  tiles that exist (usually none); other rows 0 -> [M + tile, D]."""

  def body(carry):
    t, out = carry
    g, s, ok = _tile_at(t, starts, sizes, c, tile)
    y = _swiglu_tile(jax.lax.dynamic_slice_in_dim(xs, s, tile), gu_w[g], dn_w[g])
    old = jax.lax.dynamic_slice_in_dim(out, s, tile)
    return t + 1, jax.lax.dynamic_update_slice_in_dim(
        out, jnp.where(ok[:, None], y, old), s, 0)

  n = _n_tiles(sizes, c, tile)
  return jax.lax.while_loop(lambda carry: carry[0] < n, body,
                            (0, jnp.zeros_like(xs)))[1]


def _overflow_fwd(xs, gu_w, dn_w, starts, sizes, c, tile):
  return _overflow(xs, gu_w, dn_w, starts, sizes, c, tile), (xs, gu_w, dn_w, starts,
                                                             sizes)


def _overflow_bwd(c, tile, res, dy):
  """The same tiles again, each tile's VJP accumulated (a while_loop too)."""
  xs, gu_w, dn_w, starts, sizes = res

  def body(carry):
    t, dxs, dgu, ddn = carry
    g, s, ok = _tile_at(t, starts, sizes, c, tile)
    dyt = jnp.where(ok[:, None], jax.lax.dynamic_slice_in_dim(dy, s, tile), 0)
    _, vjp = jax.vjp(_swiglu_tile, jax.lax.dynamic_slice_in_dim(xs, s, tile),
                     gu_w[g], dn_w[g])
    dxt, dgu_g, ddn_g = vjp(dyt.astype(xs.dtype))
    add = lambda a, v, at, n: jax.lax.dynamic_update_slice_in_dim(
        a, jax.lax.dynamic_slice_in_dim(a, at, n) + v, at, 0)
    return (t + 1, add(dxs, jnp.where(ok[:, None], dxt, 0), s, tile),
            add(dgu, dgu_g[None], g, 1), add(ddn, ddn_g[None], g, 1))

  n = _n_tiles(sizes, c, tile)
  _, dxs, dgu, ddn = jax.lax.while_loop(
      lambda carry: carry[0] < n, body,
      (0, jnp.zeros_like(xs), jnp.zeros_like(gu_w), jnp.zeros_like(dn_w)))
  return dxs, dgu, ddn, None, None


_overflow.defvjp(_overflow_fwd, _overflow_bwd)


def capacity_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
                 down: jax.Array, *, capacity: int | None = None,
                 tile: int | None = None) -> jax.Array:
  """'capacity': shapes as `ragged_ffn`. `capacity` slots per expert (default
  `default_capacity`), overflow rows in tiles of `tile` rows (default about a
  quarter of the slots, at least 8; module doc)."""
  n, k = idx.shape
  e, d, _, i = gate_up.shape
  m = n * k
  c = capacity or default_capacity(m, e)
  tile = min(tile or max(TILE, 8 * math.ceil(c / 32)), c)
  order, inverse, expert, sizes, starts = _sort(idx, e)
  rank = jnp.arange(m) - starts[expert]
  xs = _permute(_by_assignment(x, k), order, inverse)  # [M, D]: sorted by expert.
  # Slot e * c + r holds sorted row starts[e] + r (r < sizes[e]); both ways.
  slot_e, slot_r = jnp.divmod(jnp.arange(e * c), c)
  slot_row, slot_ok = starts[slot_e] + slot_r, slot_r < sizes[slot_e]
  row_slot, row_ok = expert * c + rank, rank < c
  gu_w = gate_up.reshape(e, d, 2 * i).astype(x.dtype)
  dn_w = down.astype(x.dtype)

  def swiglu(rows, gu, dn, spec):  # spec: the einsum subscripts of one matmul.
    h = jnp.einsum(spec, rows, gu)
    return jnp.einsum(spec, jax.nn.silu(h[..., :i]) * h[..., i:], dn)

  slots = take_rows(xs, slot_row, slot_ok, row_slot, row_ok).reshape(e, c, d)
  y_slots = swiglu(slots, gu_w, dn_w, 'ecd,edf->ecf').reshape(e * c, d)
  ys = take_rows(y_slots, row_slot, row_ok, slot_row, slot_ok)  # Overflow rows: 0.
  if m > c:  # Some expert may hold more than c rows.
    pad = jnp.zeros((tile, d), xs.dtype)
    ys = ys + _overflow(jnp.concatenate([xs, pad]), gu_w, dn_w, starts, sizes, c,
                        tile)[:m].astype(ys.dtype)
  return combine(_permute(ys, inverse, order), w, n, k)


PATHS = {'ragged': ragged_ffn, 'capacity': capacity_ffn, 'dense': dense_ffn}


def routed_ffn(x: jax.Array, idx: jax.Array, w: jax.Array, gate_up: jax.Array,
               down: jax.Array, *, impl: str = 'auto') -> jax.Array:
  """Routed experts of rows x [N, D] chosen by idx [N, k] (weights w [N, k]):
  gate_up [E, D, 2, I], down [E, I, D] -> [N, D] float32, by the path
  `choose_impl(impl)`."""
  return PATHS[choose_impl(impl)](x, idx, w, gate_up, down)
