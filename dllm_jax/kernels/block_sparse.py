"""Attention that skips the tiles a block-diffusion mask rules out entirely.

`jax.nn.dot_product_attention` with a mask computes every query-key tile and
masks afterwards; for the [x_t, x_0] mask of block diffusion about 3/4 of the
(2L)^2 scores are never used (clean -> noisy is empty, noisy -> noisy is the
block diagonal, the two causal parts are triangles). Here queries and keys are
cut into tiles, only the tile pairs that the mask can allow are gathered and
computed, and each query tile's partial softmaxes are merged exactly (the
flash-attention combination by running max and sum). Plain XLA ops: it runs and
differentiates on every backend; the mask is still applied inside each tile.

  pairs = tile_pairs(seq_len, block_size, tile)          # static, host
  out = attend_tiles(q, k, v, mask, pairs, tile)         # [B, 2L, H, D]

Training reaches it through `AttentionSpec.tiles` (a static `TileLayout`), which
`attention.attend` dispatches to `attend_layout`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


def tile_pairs(seq_len: int, block_size: int, tile: int,
               packed: bool = False) -> np.ndarray:
  """(query tile, key tile) pairs [P, 2] the [x_t, x_0] mask of rows of
  `seq_len` can allow, in row-index tiles of `tile` (dividing seq_len).

  Blocks count from each document's position 0; with `packed` documents need not
  start on a block boundary, so a block may straddle two tiles: the noisy
  diagonal and the clean triangle widen by one tile (a superset; still exact,
  the mask applies inside)."""
  if seq_len % tile:
    raise ValueError(f'tile {tile} does not divide the row length {seq_len}.')
  i = np.arange(seq_len)
  b = i // block_size
  nn, nc, cc = b[:, None] == b[None, :], b[:, None] > b[None, :], b[:, None] >= b[None, :]
  n = seq_len // tile
  any_tile = lambda m: m.reshape(n, tile, n, tile).any(axis=(1, 3))
  nn, nc, cc = any_tile(nn), any_tile(nc), any_tile(cc)
  if packed:
    a = np.arange(n)
    near = np.abs(a[:, None] - a[None, :]) <= 1
    nn, nc, cc = nn | near, nc | (a[:, None] >= a[None, :]), cc | (a[None, :] <= a[:, None] + 1)
  full = np.block([[nn, nc], [np.zeros_like(nn), cc]])
  return np.argwhere(full).astype(np.int32)


def attend_tiles(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                 pairs: np.ndarray, tile: int) -> jax.Array:
  """Masked attention over the listed tile pairs only.

  Args:
    q, k, v: [B, T, H, D] (same heads).
    mask: bool [B, 1, T, T] or None (tiles fully allowed).
    pairs: int [P, 2] static (query tile, key tile); every query tile must
      appear (each query needs a visible key).
    tile: tile length (divides T).

  Returns:
    [B, T, H, D], equal to `jax.nn.dot_product_attention(q, k, v, mask=mask)`.
  """
  b, t, h, d = q.shape
  n = t // tile
  qi, ki = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])
  tiles = lambda x: x.reshape(b, n, tile, h, d)
  qs, ks, vs = tiles(q)[:, qi], tiles(k)[:, ki], tiles(v)[:, ki]  # [B, P, S, H, D]
  s = jnp.einsum('bpqhd,bpkhd->bphqk', qs, ks,
                 preferred_element_type=jnp.float32) / np.sqrt(d)
  if mask is not None:
    m = mask[:, 0].reshape(b, n, tile, n, tile)
    m = m[:, qi, :, ki, :]  # Advanced indices first: [P, B, S, S].
    s = jnp.where(jnp.moveaxis(m, 0, 1)[:, :, None], s, -jnp.inf)
  row_max = jnp.max(s, axis=-1)  # [B, P, H, S]
  seg_max = jax.ops.segment_max(jnp.moveaxis(row_max, 1, 0), qi, num_segments=n)
  seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max, 0.0))
  p = jnp.exp(s - jnp.moveaxis(seg_max[qi], 0, 1)[..., None])  # [B, P, H, S, S]
  num = jnp.einsum('bphqk,bpkhd->pbqhd', p, vs.astype(jnp.float32))
  den = jnp.moveaxis(p.sum(-1), 3, 2)  # [B, P, S, H]
  num = jax.ops.segment_sum(num, qi, num_segments=n)  # [n, B, S, H, D]
  den = jax.ops.segment_sum(jnp.moveaxis(den, 1, 0), qi, num_segments=n)
  out = num / den[..., None]
  return jnp.moveaxis(out, 0, 1).reshape(b, t, h, d).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class TileLayout:
  """The static (hashable) tile structure of an [x_t, x_0] mask: rows of 2 x
  `seq_len`, blocks of every size in `block_sizes` (a growing block size: the
  union of their tile pairs), tiles of `tile`; `packed` documents restart
  their blocks inside a row."""

  seq_len: int
  block_sizes: tuple[int, ...]
  tile: int
  packed: bool = False

  def pairs(self) -> np.ndarray:
    """(query tile, key tile) pairs [P, 2] any of the block sizes allows."""
    return _union_pairs(self.seq_len, self.block_sizes, self.tile, self.packed)


@functools.lru_cache(maxsize=64)
def _union_pairs(seq_len: int, block_sizes: tuple[int, ...], tile: int,
                 packed: bool) -> np.ndarray:
  n = 2 * seq_len // tile
  allowed = np.zeros((n, n), bool)
  for b in block_sizes:
    p = tile_pairs(seq_len, b, tile, packed)
    allowed[p[:, 0], p[:, 1]] = True
  return np.argwhere(allowed).astype(np.int32)


def attend_layout(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                  layout: TileLayout) -> jax.Array:
  """`attend_tiles` over `layout`'s tile pairs, grouped-query attention included.

  Args:
    q: [B, 2L, Hq, D]; k, v: [B, 2L, Hkv, D] with Hkv dividing Hq.
    mask: bool [B or 1, 1, 2L, 2L] or None.
    layout: the static tiles (2L must be 2 * layout.seq_len).

  Returns:
    [B, 2L, Hq, D].
  """
  if q.shape[1] != 2 * layout.seq_len or k.shape[1] != q.shape[1]:
    raise ValueError(f'tile layout of rows 2 x {layout.seq_len} given queries of '
                     f'{q.shape[1]} and keys of {k.shape[1]} positions.')
  group = q.shape[2] // k.shape[2]
  if group > 1:  # Query head h reads key/value head h // group.
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  if mask is not None and mask.shape[0] != q.shape[0]:
    mask = jnp.broadcast_to(mask, (q.shape[0],) + mask.shape[1:])
  return attend_tiles(q, k, v, mask, layout.pairs(), layout.tile)
