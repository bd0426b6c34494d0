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
with a bare AssertionError (../shared/STACK_NOTES.md). Elsewhere the jnp twin
runs (CPU tests use interpret mode). Selecting which positions to commit (a sort
over <= block_length positions) stays in jnp: sorts lower to neither backend.
"""

from __future__ import annotations

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


def candidates_jnp(logits: jax.Array, seed: jax.Array, *, temperature: float,
                   mask_id: int, eos_id: int | None = None,
                   row_offset: int = 0) -> tuple[jax.Array, jax.Array]:
  """The twin: logits [R, V] -> (candidates int32 [R], confidence float32 [R]).

  `mask_id` (and `eos_id`, when given: LLaDA's `logits_eos_inf`) never win.
  Rows are numbered from `row_offset` for the noise.
  """
  r, v = logits.shape
  cols = jnp.arange(v, dtype=jnp.uint32)[None, :]
  x = jnp.where(_excluded(cols, mask_id, eos_id), -jnp.inf, logits.astype(jnp.float32))
  noisy = x
  if temperature > 0:
    rows = (jnp.arange(r, dtype=jnp.uint32) + jnp.uint32(row_offset))[:, None]
    noisy = x + temperature * gumbel(seed[0], seed[1], rows, cols)
  cand = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
  chosen = jnp.take_along_axis(x, cand[:, None], axis=-1)[:, 0]
  m = jnp.max(x, axis=-1)
  conf = jnp.exp(chosen - m) / jnp.sum(jnp.exp(x - m[:, None]), axis=-1)
  return cand, conf


def _kernel(seed_ref, logits_ref, cand_ref, conf_ref, *, v: int, tile: int,
            rows: int, temperature: float, mask_id: int, eos_id: int | None):
  i = pl.program_id(0)
  row_ids = (i * rows + jnp.arange(rows, dtype=jnp.int32)).astype(jnp.uint32)
  seed0, seed1 = seed_ref[0], seed_ref[1]  # Scalar loads.
  neg = jnp.full((rows,), -jnp.inf, jnp.float32)

  def body(j, carry):
    m, s, best_noisy, best_idx, best_logit = carry
    col0 = j * tile
    cols = col0 + jnp.arange(tile, dtype=jnp.int32)
    valid = cols < v
    x = plgpu.load(logits_ref.at[pl.ds(i * rows, rows), pl.ds(col0, tile)],
                   mask=valid[None, :], other=-jnp.inf).astype(jnp.float32)
    ucols = cols.astype(jnp.uint32)[None, :]
    x = jnp.where(_excluded(ucols, mask_id, eos_id) | ~valid[None, :], -jnp.inf, x)
    # Online softmax denominator.
    tile_max = jnp.max(x, axis=1)
    m_new = jnp.maximum(m, tile_max)
    scale = jnp.where(m_new == -jnp.inf, 0.0, jnp.exp(m - m_new))
    p = jnp.where(x == -jnp.inf, 0.0, jnp.exp(x - m_new[:, None]))
    s = s * scale + jnp.sum(p, axis=1)
    # Running argmax of the noisy logits (first index on ties, as jnp.argmax).
    noisy = x
    if temperature > 0:
      noisy = x + temperature * gumbel(seed0, seed1, row_ids[:, None], ucols)
    t_best = jnp.max(noisy, axis=1)
    hit = noisy == t_best[:, None]
    t_idx = jnp.min(jnp.where(hit, cols[None, :], jnp.int32(2**31 - 1)), axis=1)
    t_logit = jnp.max(jnp.where(cols[None, :] == t_idx[:, None], x, -jnp.inf), axis=1)
    better = t_best > best_noisy
    return (m_new, s, jnp.where(better, t_best, best_noisy),
            jnp.where(better, t_idx, best_idx), jnp.where(better, t_logit, best_logit))

  init = (neg, jnp.zeros((rows,), jnp.float32), neg, jnp.zeros((rows,), jnp.int32), neg)
  m, s, _, idx, logit = jax.lax.fori_loop(0, pl.cdiv(v, tile), body, init)
  cand_ref[...] = idx
  conf_ref[...] = jnp.exp(logit - m) / s


def candidates_pallas(logits: jax.Array, seed: jax.Array, *, temperature: float,
                      mask_id: int, eos_id: int | None = None, rows: int = 16,
                      tile: int = 2048, interpret: bool = False):
  """The kernel (same contract as `candidates_jnp`, rows numbered from 0)."""
  r, v = logits.shape
  pad = (-r) % rows
  if pad:
    logits = jnp.pad(logits, ((0, pad), (0, 0)))
  kernel = functools.partial(_kernel, v=v, tile=tile, rows=rows,
                             temperature=float(temperature), mask_id=mask_id,
                             eos_id=eos_id)
  kwargs = {}
  if not interpret:
    kwargs['compiler_params'] = plgpu.CompilerParams(num_warps=8, num_stages=2)
  cand, conf = pl.pallas_call(
      kernel,
      grid=((r + pad) // rows,),
      # The whole logits array stays in global memory; the kernel loads
      # [rows, tile] pieces itself (the vocabulary is not a power of two).
      in_specs=[pl.BlockSpec((2,), lambda i: (0,)),
                pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=[pl.BlockSpec((rows,), lambda i: (i,)),
                 pl.BlockSpec((rows,), lambda i: (i,))],
      out_shape=[jax.ShapeDtypeStruct((r + pad,), jnp.int32),
                 jax.ShapeDtypeStruct((r + pad,), jnp.float32)],
      interpret=interpret, **kwargs)(seed, logits)
  return cand[:r], conf[:r]


# Measured on one H100 (`launch.bench_kernel`, vocabulary 126,464, bf16 logits,
# experiments/perf_notes.md): at temperature 0 the kernel beats the twin on the
# batch-1 sampler's rows (384: 0.69 vs 0.86 ms) but is 9% slower at 12,288; with
# Gumbel noise it is 3.4x-5.4x slower (its per-element hash and logs run with
# fewer programs in flight than XLA's fusion). So it is dispatched only where it
# measured faster: temperature 0 and at most this many rows.
KERNEL_MAX_ROWS = 2048


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


@functools.lru_cache(maxsize=None)
def use_kernel() -> bool:
  """Whether the compiled kernel runs here: on a GPU, once per process, a small
  probe must compile and agree with the twin; otherwise the twin is used (with a
  warning naming the failure), so sampling never depends on the kernel."""
  if jax.default_backend() != 'gpu':
    return False
  try:
    _probe()
    return True
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(f'fused Pallas kernel unavailable on this GPU, using the jnp twin: '
                  f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
    return False


def candidates(logits: jax.Array, seed: jax.Array, *, temperature: float,
               mask_id: int, eos_id: int | None = None, interpret: bool = False):
  """Dispatch: the Pallas kernel on GPU where it measured faster (temperature 0,
  at most `KERNEL_MAX_ROWS` rows; see above) or in interpret mode when asked, the
  jnp twin elsewhere (same results either way).
  logits [..., V] -> (candidates [...], confidence [...])."""
  shape = logits.shape[:-1]
  flat = logits.reshape(-1, logits.shape[-1])
  fast_here = temperature == 0 and flat.shape[0] <= KERNEL_MAX_ROWS
  if interpret or (fast_here and use_kernel()):
    cand, conf = candidates_pallas(flat, seed, temperature=temperature,
                                   mask_id=mask_id, eos_id=eos_id, interpret=interpret)
  else:
    cand, conf = candidates_jnp(flat, seed, temperature=temperature, mask_id=mask_id,
                                eos_id=eos_id)
  return cand.reshape(shape), conf.reshape(shape)
