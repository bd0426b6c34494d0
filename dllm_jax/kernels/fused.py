"""The per-step hot path fused: logits -> (candidate token, its confidence).

For each row of logits [R, V]: the candidate is the argmax of the logits plus
`temperature` x Gumbel noise, and its confidence the softmax probability of the
candidate under the un-noised logits. The Pallas kernel streams the vocabulary
in tiles with an online (max, sum-exp) and a running argmax, so no [R, V]
float32 softmax or noise array is ever written; the noise is counter-based (a
hash of seed, row and vocabulary index), so the kernel and its jnp twin draw the
same numbers and results are reproducible across backends and tilings.

Backend: Triton on GPUs. Mosaic GPU (Pallas' default GPU backend) cannot yet
express it: it lowers no argmax/reduction-with-index, copies at most 256
elements along a dimension, and a [128, 256]-block row-max kernel failed there
with a bare AssertionError (jax 0.11, H100). Elsewhere the jnp twin
runs (CPU tests use interpret mode). Selecting which positions to commit (a sort
over <= block_length positions) stays in jnp: sorts lower to neither backend.
`fused_head.py` builds on this module: the same pass with the output head
fused in (hidden states in, the logits never written), and its dispatcher
`head_candidates`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_GOLDEN = 0x9E3779B1


def _fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser (uint32 -> uint32, a bijection)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def counter_uniform(seed0: jax.Array, seed1: jax.Array, rows: jax.Array,
                    cols: jax.Array) -> jax.Array:
  """Uniform float32 in (0, 1) from a uint32 seed pair and uint32 row / column
  indices (broadcast together); 24 random bits, never 0 or 1."""
  h = _fmix32(rows ^ seed0)
  h = _fmix32(h + seed1 + cols * jnp.uint32(_GOLDEN))
  return ((h >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel(seed0, seed1, rows, cols) -> jax.Array:
  return -jnp.log(-jnp.log(counter_uniform(seed0, seed1, rows, cols)))


def seed_from_key(key: jax.Array) -> jax.Array:
  """uint32 [2] seed of a step's PRNG key."""
  return jax.random.bits(key, (2,), jnp.uint32)


def _excluded(cols, mask_id, eos_id):
  out = cols == mask_id
  return out if eos_id is None else out | (cols == eos_id)


def _combine(m, s, bv, bi, bx):
  """Per-split partials [splits, R] -> (candidates [R], confidence [R]): the
  global max and rescaled sums; the best split's argmax (the first split on ties:
  splits are in column order, so the first column wins, as in jnp.argmax)."""
  m_all = jnp.max(m, axis=0)
  s_all = jnp.sum(jnp.where(m == -jnp.inf, 0.0, s * jnp.exp(m - m_all)), axis=0)
  k_best = jnp.argmax(bv, axis=0)[None]
  cand = jnp.take_along_axis(bi, k_best, axis=0)[0]
  logit = jnp.take_along_axis(bx, k_best, axis=0)[0]
  return cand, jnp.exp(logit - m_all) / s_all


def candidates_jnp(logits: jax.Array, seed: jax.Array, *, temperature: float,
                   mask_id: int, eos_id: int | None = None, row_offset: int = 0,
                   splits: int = 1) -> tuple[jax.Array, jax.Array]:
  """The twin: logits [R, V] -> (candidates int32 [R], confidence float32 [R]).

  `mask_id` (and `eos_id`, when given: LLaDA's `logits_eos_inf`) never win.
  Rows are numbered from `row_offset` for the noise. `splits` > 1 reduces each
  row in that many vocabulary slices first and combines them, as the kernel
  does: more parallel work when rows are few (same candidates; confidences
  equal up to float summation order).
  """
  r, v = logits.shape
  cols = jnp.arange(v, dtype=jnp.uint32)[None, :]
  x = jnp.where(_excluded(cols, mask_id, eos_id), -jnp.inf, logits.astype(jnp.float32))
  noisy = x
  if temperature > 0:
    rows = (jnp.arange(r, dtype=jnp.uint32) + jnp.uint32(row_offset))[:, None]
    noisy = x + temperature * gumbel(seed[0], seed[1], rows, cols)
  if splits > 1:
    w = -(-v // splits)
    part = lambda a: jnp.pad(a, ((0, 0), (0, w * splits - v)),
                             constant_values=-jnp.inf).reshape(r, splits, w)
    xs, ns = part(x), part(noisy)
    m = jnp.max(xs, axis=-1)
    s = jnp.sum(jnp.where(xs == -jnp.inf, 0.0, jnp.exp(xs - m[..., None])), axis=-1)
    local = jnp.argmax(ns, axis=-1)[..., None]
    bv = jnp.take_along_axis(ns, local, axis=-1)[..., 0]
    bx = jnp.take_along_axis(xs, local, axis=-1)[..., 0]
    bi = (local[..., 0] + jnp.arange(splits) * w).astype(jnp.int32)
    return _combine(m.T, s.T, bv.T, bi.T, bx.T)
  cand = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
  chosen = jnp.take_along_axis(x, cand[:, None], axis=-1)[:, 0]
  m = jnp.max(x, axis=-1)
  conf = jnp.exp(chosen - m) / jnp.sum(jnp.exp(x - m[:, None]), axis=-1)
  return cand, conf


def parse_shape(cls, text: str, what: str, syntax: str):
  """A launch-shape dataclass `cls` from its fields' integers joined by ':'
  (`syntax`, the last field optional; a bool field is 0 or 1)."""
  parts = [int(x) for x in text.split(':')]
  fields = dataclasses.fields(cls)
  if len(parts) not in (len(fields) - 1, len(fields)):
    raise ValueError(f'{what} {text!r} is not {syntax}.')
  return cls(*(bool(v) if isinstance(f.default, bool) else v
               for f, v in zip(fields, parts)))


def shape_name(config) -> str:
  """A launch shape as `parse_shape` reads it."""
  return ':'.join(str(int(getattr(config, f.name))) for f in dataclasses.fields(config))


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Launch shape of the kernel (every setting computes the same function).

  rows: rows per program. tile: vocabulary columns loaded per loop iteration.
  splits: programs per row block along the vocabulary (each returns partial
    max/sum/argmax, combined in jnp); 0 picks enough to give ~1,024 programs.
  lanes: keep the running argmax per column lane ([rows, tile] accumulators,
    reduced once at the end) instead of reducing every tile.
  num_warps, num_stages: Triton's.
  """
  # Default: the fastest of `launch.bench_kernel`'s shapes on an H200 at 384 and
  # 12,288 rows, temperature 0 (experiments/perf_notes.md, 2026-11-27, session 6).
  rows: int = 8
  tile: int = 1024
  splits: int = 0
  lanes: bool = False
  num_warps: int = 4
  num_stages: int = 2

  @classmethod
  def parse(cls, text: str) -> 'KernelConfig':
    """'rows:tile:splits:lanes:warps[:stages]', e.g. '8:1024:0:1:4'."""
    return parse_shape(cls, text, 'kernel config', 'rows:tile:splits:lanes:warps[:stages]')

  def name(self) -> str:
    return shape_name(self)


_BIG = 2**31 - 1


def _tile_update(carry, x, cols, valid, row_ids, seed, *, lanes: bool,
                 temperature: float, mask_id: int, eos_id: int | None):
  """Folds one vocabulary tile into a program's running partials.

  carry: (max [rows], sum-exp [rows], best): best is (noisy value, column,
    logit), each [rows], or [rows, tile] per lane with `lanes`.
  x: float32 logits [rows, tile] of columns `cols` int32 [tile]; `valid` [tile]
    marks the columns inside the vocabulary. row_ids: uint32 [rows] (the noise's
    rows); seed: the uint32 pair."""
  m, s, best = carry
  ucols = cols.astype(jnp.uint32)[None, :]
  x = jnp.where(_excluded(ucols, mask_id, eos_id) | ~valid[None, :], -jnp.inf, x)
  # Online softmax denominator.
  m_new = jnp.maximum(m, jnp.max(x, axis=1))
  scale = jnp.where(m_new == -jnp.inf, 0.0, jnp.exp(m - m_new))
  p = jnp.where(x == -jnp.inf, 0.0, jnp.exp(x - m_new[:, None]))
  s = s * scale + jnp.sum(p, axis=1)
  noisy = x
  if temperature > 0:
    noisy = x + temperature * gumbel(seed[0], seed[1], row_ids[:, None], ucols)
  bv, bi, bx = best
  if lanes:  # Per lane: a later tile wins only if strictly greater.
    better = noisy > bv
    return m_new, s, (jnp.where(better, noisy, bv),
                      jnp.where(better, cols[None, :], bi), jnp.where(better, x, bx))
  # Per tile: its first maximum, kept if strictly better than the best so far.
  t_best = jnp.max(noisy, axis=1)
  t_idx = jnp.min(jnp.where(noisy == t_best[:, None], cols[None, :], _BIG), axis=1)
  t_logit = jnp.max(jnp.where(cols[None, :] == t_idx[:, None], x, -jnp.inf), axis=1)
  better = t_best > bv
  return m_new, s, (jnp.where(better, t_best, bv), jnp.where(better, t_idx, bi),
                    jnp.where(better, t_logit, bx))


def _init_carry(rows: int, tile: int, start, lanes: bool):
  """The partials before a split's first tile (`start`: its first column)."""
  neg = jnp.full((rows,), -jnp.inf, jnp.float32)
  if lanes:
    shape = (rows, tile)
    best = (jnp.full(shape, -jnp.inf, jnp.float32),
            jnp.broadcast_to(start + jnp.arange(tile, dtype=jnp.int32)[None, :], shape),
            jnp.full(shape, -jnp.inf, jnp.float32))
  else:
    best = (neg, jnp.full((rows,), start, jnp.int32), neg)
  return neg, jnp.zeros((rows,), jnp.float32), best


def _store(carry, lanes: bool, m_ref, s_ref, bv_ref, bi_ref, bx_ref) -> None:
  """Writes a split's partials (per-lane bests reduced first: the first column
  of the best value)."""
  m, s, (bv, bi, bx) = carry
  if lanes:
    v_best = jnp.max(bv, axis=1)
    idx = jnp.min(jnp.where(bv == v_best[:, None], bi, _BIG), axis=1)
    bx = jnp.max(jnp.where(bi == idx[:, None], bx, -jnp.inf), axis=1)
    bv, bi = v_best, idx
  m_ref[0, :] = m
  s_ref[0, :] = s
  bv_ref[0, :] = bv
  bi_ref[0, :] = bi
  bx_ref[0, :] = bx


def _kernel(seed_ref, logits_ref, m_ref, s_ref, bv_ref, bi_ref, bx_ref, *, v: int,
            kc: KernelConfig, n_tiles: int, temperature: float, mask_id: int,
            eos_id: int | None):
  """One program: `kc.rows` rows x one vocabulary split of `n_tiles` tiles.
  Writes the split's partials: max and sum-exp of the logits, and the best
  noisy value with its column and un-noised logit (first column on ties)."""
  rows, tile = kc.rows, kc.tile
  i, k = pl.program_id(0), pl.program_id(1)
  start = k * (n_tiles * tile)
  row_ids = (i * rows + jnp.arange(rows, dtype=jnp.int32)).astype(jnp.uint32)
  seed = (seed_ref[0], seed_ref[1])  # Scalar loads.
  lane = jnp.arange(tile, dtype=jnp.int32)
  update = functools.partial(_tile_update, row_ids=row_ids, seed=seed, lanes=kc.lanes,
                             temperature=temperature, mask_id=mask_id, eos_id=eos_id)

  def body(j, carry):
    cols = start + j * tile + lane
    valid = cols < v
    x = plgpu.load(logits_ref.at[pl.ds(i * rows, rows), pl.ds(start + j * tile, tile)],
                   mask=valid[None, :], other=-jnp.inf).astype(jnp.float32)
    return update(carry, x, cols, valid)

  carry = jax.lax.fori_loop(0, n_tiles, body, _init_carry(rows, tile, start, kc.lanes))
  _store(carry, kc.lanes, m_ref, s_ref, bv_ref, bi_ref, bx_ref)


def _auto_splits(row_blocks: int, max_splits: int) -> int:
  return max(1, min(max_splits, -(-1024 // row_blocks)))


def candidates_pallas(logits: jax.Array, seed: jax.Array, *, temperature: float,
                      mask_id: int, eos_id: int | None = None,
                      kernel: KernelConfig | None = None, interpret: bool = False):
  """The kernel (same contract as `candidates_jnp`, rows numbered from 0);
  `kernel` is the launch shape (default: `KernelConfig()`)."""
  kc = kernel or KernelConfig()
  r, v = logits.shape
  pad = (-r) % kc.rows
  if pad:
    logits = jnp.pad(logits, ((0, pad), (0, 0)))
  row_blocks, max_splits = (r + pad) // kc.rows, pl.cdiv(v, kc.tile)
  splits = min(kc.splits, max_splits) or _auto_splits(row_blocks, max_splits)
  n_tiles = pl.cdiv(max_splits, splits)  # Tiles per split (the last may overhang).
  body = functools.partial(_kernel, v=v, kc=kc, n_tiles=n_tiles,
                           temperature=float(temperature), mask_id=mask_id,
                           eos_id=eos_id)
  # The whole logits array stays in global memory; the kernel loads
  # [rows, tile] pieces itself (the vocabulary is not a power of two).
  return _launch(body, seed, [logits], r=r, padded=r + pad, kc=kc, splits=splits,
                 interpret=interpret)


def _launch(body, seed, inputs: list, *, r: int, padded: int, kc, splits: int,
            interpret: bool):
  """Runs a candidate kernel `body` over the grid (row blocks, splits): the
  seed pair in, `inputs` left in global memory (the kernel loads its own
  pieces), each program's partials out [splits, padded]; returns their
  combination (candidate int32 [r], confidence float32 [r]). `kc` has the
  rows per program and Triton's num_warps / num_stages."""
  kwargs = {}
  if not interpret:
    kwargs['compiler_params'] = plgpu.CompilerParams(num_warps=kc.num_warps,
                                                     num_stages=kc.num_stages)
  part = lambda dtype: jax.ShapeDtypeStruct((splits, padded), dtype)
  out_spec = pl.BlockSpec((1, kc.rows), lambda i, k: (k, i))
  m, s, bv, bi, bx = pl.pallas_call(
      body,
      grid=(padded // kc.rows, splits),
      in_specs=[pl.BlockSpec((2,), lambda i, k: (0,))]
      + [pl.BlockSpec(memory_space=pl.ANY)] * len(inputs),
      out_specs=[out_spec] * 5,
      out_shape=[part(jnp.float32), part(jnp.float32), part(jnp.float32),
                 part(jnp.int32), part(jnp.float32)],
      interpret=interpret, **kwargs)(seed, *inputs)
  cand, conf = _combine(m, s, bv, bi, bx)
  return cand[:r], conf[:r]


# Measured (`launch.bench_kernel`, vocabulary 126,464, bf16 logits,
# experiments/perf_notes.md). On one H100 the first launch shape (16 rows per
# program walking the whole vocabulary) beat the twin only at 384 rows,
# temperature 0. On one H200 (session 6) the default shape above (8 rows, 1,024
# columns per tile, the vocabulary split over enough programs for ~1,024 in
# flight) beats the twin at temperature 0 at both 384 rows (0.237 vs 0.284 ms)
# and 12,288 rows (2.64 vs 3.27 ms); with Gumbel noise it is slower than the
# twin at both (0.42 vs 0.38 ms with the twin's 16 splits; 8.38 vs 6.96 ms). So
# it is dispatched only where it won: temperature 0 and KERNEL_ROWS[0] <= rows
# <= KERNEL_ROWS[1] (the sampler's rows: batch x block); below 384 rows nothing
# was measured and the twin stays.
KERNEL_ROWS = (384, 12288)


def _probe(interpret: bool = False) -> None:
  """Compiles the kernel on a small input and checks it against the twin;
  raises on failure. Works when called while a jit is tracing (the sampler's
  first dispatch): inputs are NumPy and both sides run as compiled executables,
  so nothing is staged into the outer trace."""
  logits = np.random.default_rng(0).standard_normal((32, 3000)).astype(np.float32)
  seed = np.asarray([1, 2], np.uint32)
  for t in (0.0, 1.0):
    outs = []
    for fn, kw in ((candidates_pallas, {'interpret': interpret}), (candidates_jnp, {})):
      f = jax.jit(functools.partial(fn, temperature=t, mask_id=7, **kw))
      outs.append(np.asarray(f.lower(logits, seed).compile()(logits, seed)[0]))
    if not np.array_equal(*outs):
      raise ValueError('kernel and twin disagree on the probe')


def gpu_probe_passes(probe, unavailable: str) -> bool:
  """Whether a compiled kernel may run here: on a GPU, `probe()` must compile
  and agree with its twin; its failure is a warning (`unavailable`: what is
  used instead) and False, so a job never depends on the kernel."""
  if jax.default_backend() != 'gpu':
    return False
  try:
    probe()
    return True
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(f'{unavailable}: {type(e).__name__}: '
                  f'{str(e).splitlines()[0] if str(e) else ""}')
    return False


@functools.lru_cache(maxsize=None)
def use_kernel() -> bool:
  """Whether the compiled kernel runs here (once per process): on a GPU whose
  small probe compiles and agrees with the twin; otherwise the twin is used."""
  return gpu_probe_passes(_probe, 'fused Pallas kernel unavailable on this GPU, '
                          'using the jnp twin')


def candidates(logits: jax.Array, seed: jax.Array, *, temperature: float,
               mask_id: int, eos_id: int | None = None, interpret: bool = False):
  """Dispatch: the Pallas kernel on GPU where it measured faster (temperature 0,
  rows within `KERNEL_ROWS`; see above) or in interpret mode when asked, the
  jnp twin elsewhere (same results either way).
  logits [..., V] -> (candidates [...], confidence [...])."""
  shape = logits.shape[:-1]
  flat = logits.reshape(-1, logits.shape[-1])
  fast_here = temperature == 0 and KERNEL_ROWS[0] <= flat.shape[0] <= KERNEL_ROWS[1]
  if interpret or (fast_here and use_kernel()):
    cand, conf = candidates_pallas(flat, seed, temperature=temperature,
                                   mask_id=mask_id, eos_id=eos_id, interpret=interpret)
  else:
    cand, conf = candidates_jnp(flat, seed, temperature=temperature, mask_id=mask_id,
                                eos_id=eos_id)
  return cand.reshape(shape), conf.reshape(shape)
