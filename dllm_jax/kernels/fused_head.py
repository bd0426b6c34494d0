"""The output head fused into the candidate pass: the logits are never written.

hidden [R, D] (the final normalised hidden states) and the output head [D, V]
-> (candidate token int32 [R], its confidence float32 [R]), the same function
as the head matmul followed by `fused.candidates_jnp`, without the [R, V]
logits ever reaching memory (the way fused linear-cross-entropy kernels avoid
materialising logits). Each program takes `rows` rows and one slice of the
vocabulary; per `tile` columns it computes the logits tile on the fly (h @ W
over D in `k_tile` chunks, float32 accumulate) and folds it into the running
partials `fused`'s kernel keeps (online max / sum-exp, first-column running
argmax under counter-based Gumbel noise); jnp combines the slices' partials.

So the kernel and its twin draw the same noise and pick the same candidates up
to float summation order (the twin's matmul adds the D products in another
order; on exact ties the first column wins in both). `logits_dtype` rounds each
logit as the model's head does (its compute dtype, e.g. bf16) before the
candidate pass, so the kernel can stand in for the model's own logits.

Backend: Triton on GPUs (Triton's dot wants power-of-two tiles of at least 16;
the vocabulary, rows and D may be ragged). Measured: nothing yet.
`head_candidates` picks this kernel or the head matmul followed by
`fused.candidates`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from dllm_jax.kernels import fused

# The per-tile update, partials and their combination are `fused`'s own (one
# definition for both kernels).
# pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class HeadKernelConfig:
  """Launch shape of the fused head kernel (every setting computes the same
  function up to float summation order).

  rows: rows per program. tile: vocabulary columns per logits tile. k_tile: the
    D chunk of each tile's matmul step. (All three powers of two >= 16.)
  splits: programs per row block along the vocabulary; 0 picks enough to give
    ~1,024 programs.
  num_warps, num_stages: Triton's.
  """
  # Unmeasured: a usual Triton matmul tile; `launch.bench_kernel --head_dim`
  # sweeps others.
  rows: int = 64
  tile: int = 128
  k_tile: int = 64
  splits: int = 0
  num_warps: int = 4
  num_stages: int = 3

  @classmethod
  def parse(cls, text: str) -> 'HeadKernelConfig':
    """'rows:tile:k_tile:splits:warps[:stages]', e.g. '64:128:64:0:4'."""
    return fused.parse_shape(cls, text, 'head kernel config',
                             'rows:tile:k_tile:splits:warps[:stages]')

  def name(self) -> str:
    return fused.shape_name(self)

  def check(self) -> None:
    for field in ('rows', 'tile', 'k_tile'):
      n = getattr(self, field)
      if n < 16 or n & (n - 1):
        raise ValueError(f'head kernel {field}={n} is not a power of two >= 16 '
                         "(Triton's dot tiles).")


def head_logits(hidden: jax.Array, head: jax.Array,
                logits_dtype=None) -> jax.Array:
  """hidden [R, D] @ head [D, V] -> float32 logits [R, V] (hidden cast to the
  head's dtype, float32 accumulate), rounded to `logits_dtype` when given."""
  logits = jnp.dot(hidden.astype(head.dtype), head, preferred_element_type=jnp.float32)
  if logits_dtype is not None:
    logits = logits.astype(logits_dtype).astype(jnp.float32)
  return logits


def head_candidates_jnp(hidden: jax.Array, head: jax.Array, seed: jax.Array, *,
                        temperature: float, mask_id: int, eos_id: int | None = None,
                        logits_dtype=None, splits: int = 1):
  """The twin: the head matmul, then `fused.candidates_jnp` (rows numbered from
  0). hidden [R, D], head [D, V] -> (candidates int32 [R], confidence float32 [R])."""
  return fused.candidates_jnp(head_logits(hidden, head, logits_dtype), seed,
                              temperature=temperature, mask_id=mask_id,
                              eos_id=eos_id, splits=splits)


def _head_kernel(seed_ref, h_ref, w_ref, m_ref, s_ref, bv_ref, bi_ref, bx_ref, *,
                 d: int, v: int, kc: HeadKernelConfig, n_tiles: int, logits_dtype,
                 temperature: float, mask_id: int, eos_id: int | None):
  """One program: `kc.rows` rows x one vocabulary split of `n_tiles` tiles;
  writes the split's partials as `fused._kernel` does."""
  rows, tile, bk = kc.rows, kc.tile, kc.k_tile
  i, k = pl.program_id(0), pl.program_id(1)
  start = k * (n_tiles * tile)
  row_ids = (i * rows + jnp.arange(rows, dtype=jnp.int32)).astype(jnp.uint32)
  lane, k_lane = jnp.arange(tile, dtype=jnp.int32), jnp.arange(bk, dtype=jnp.int32)
  update = functools.partial(fused._tile_update, row_ids=row_ids,
                             seed=(seed_ref[0], seed_ref[1]), lanes=False,
                             temperature=temperature, mask_id=mask_id, eos_id=eos_id)

  def logits_tile(col0, valid):
    def step(kk, acc):
      ks = kk * bk
      # Masks only where D is ragged (static): the common case loads plainly.
      # (Triton's load takes `other` only with a mask.)
      h_at = h_ref.at[pl.ds(i * rows, rows), pl.ds(ks, bk)]
      if d % bk == 0:
        h, w_ok = plgpu.load(h_at), valid[None, :]
      else:
        k_ok = (ks + k_lane) < d
        h = plgpu.load(h_at, mask=k_ok[None, :], other=0.0)
        w_ok = k_ok[:, None] & valid[None, :]
      w = plgpu.load(w_ref.at[pl.ds(ks, bk), pl.ds(col0, tile)], mask=w_ok, other=0.0)
      return acc + jnp.dot(h, w, preferred_element_type=jnp.float32)
    acc = jax.lax.fori_loop(0, pl.cdiv(d, bk), step,
                            jnp.zeros((rows, tile), jnp.float32))
    if logits_dtype is not None:  # Round as the model's head would.
      acc = acc.astype(logits_dtype).astype(jnp.float32)
    return acc

  def body(j, carry):
    col0 = start + j * tile
    cols = col0 + lane
    valid = cols < v
    return update(carry, logits_tile(col0, valid), cols, valid)

  carry = jax.lax.fori_loop(0, n_tiles, body,
                            fused._init_carry(rows, tile, start, False))
  fused._store(carry, False, m_ref, s_ref, bv_ref, bi_ref, bx_ref)


def head_candidates_pallas(hidden: jax.Array, head: jax.Array, seed: jax.Array, *,
                           temperature: float, mask_id: int,
                           eos_id: int | None = None, logits_dtype=None,
                           kernel: HeadKernelConfig | None = None,
                           interpret: bool = False):
  """The kernel (same contract as `head_candidates_jnp`); `kernel` is the
  launch shape (default: `HeadKernelConfig()`)."""
  kc = kernel or HeadKernelConfig()
  kc.check()
  (r, d), (d_head, v) = hidden.shape, head.shape
  if d_head != d:
    raise ValueError(f'head {head.shape} does not take hidden states {hidden.shape}.')
  hidden = hidden.astype(head.dtype)  # Triton's dot takes one input dtype.
  pad = (-r) % kc.rows
  if pad:  # Zero rows: their partials are computed and dropped.
    hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
  row_blocks, max_splits = (r + pad) // kc.rows, pl.cdiv(v, kc.tile)
  splits = min(kc.splits, max_splits) or fused._auto_splits(row_blocks, max_splits)
  n_tiles = pl.cdiv(max_splits, splits)  # Tiles per split (the last may overhang).
  body = functools.partial(
      _head_kernel, d=d, v=v, kc=kc, n_tiles=n_tiles,
      logits_dtype=None if logits_dtype is None else jnp.dtype(logits_dtype),
      temperature=float(temperature), mask_id=mask_id, eos_id=eos_id)
  # Hidden states and head stay in global memory; the kernel loads
  # [rows, k_tile] and [k_tile, tile] pieces itself.
  return fused._launch(body, seed, [hidden, head], r=r, padded=r + pad, kc=kc,
                       splits=splits, interpret=interpret)


def _probe(interpret: bool = False) -> None:
  """Compiles the kernel on a small input and checks it against the twin;
  raises on failure (NumPy inputs, compiled executables: safe inside a trace)."""
  rng = np.random.default_rng(0)
  hidden = rng.standard_normal((40, 96)).astype(jnp.bfloat16)
  head = (rng.standard_normal((96, 3000)) * 0.3).astype(jnp.bfloat16)
  seed = np.asarray([1, 2], np.uint32)
  for t in (0.0, 1.0):
    outs = []
    for fn, kw in ((head_candidates_pallas, {'interpret': interpret}),
                   (head_candidates_jnp, {})):
      f = jax.jit(functools.partial(fn, temperature=t, mask_id=7, **kw))
      outs.append(np.asarray(f.lower(hidden, head, seed).compile()(hidden, head,
                                                                  seed)[0]))
    if not np.array_equal(*outs):
      raise ValueError('fused head kernel and twin disagree on the probe')


@functools.lru_cache(maxsize=None)
def use_kernel() -> bool:
  """Whether the compiled kernel runs here: on a GPU, once per process, a small
  probe must compile and agree with the twin; otherwise False (with a warning
  naming the failure on a GPU)."""
  return fused.gpu_probe_passes(_probe, 'fused head kernel unavailable on this GPU, '
                                'using the head matmul')


# The fused head + candidate kernel (hidden states and output head in, the
# logits never written) is prepared but not yet measured on a GPU, so no
# rows range picks it (an empty range); `launch.bench_kernel --head_dim` times it
# against the head matmul followed by the kernel or the twin.
HEAD_KERNEL_ROWS = (1, 0)


def head_candidates(hidden: jax.Array, head: jax.Array, seed: jax.Array, *,
                    temperature: float, mask_id: int, eos_id: int | None = None,
                    logits_dtype=None, fuse: bool | None = None,
                    interpret: bool = False):
  """Dispatch of the head + candidate pass: hidden [..., D], head [D, V] ->
  (candidates [...], confidence [...]).

  The fused kernel runs in interpret mode when asked, and on a GPU where it
  compiles and either `fuse` is True or (`fuse` None) the rows lie
  within `HEAD_KERNEL_ROWS` (none yet); otherwise the head matmul (float32
  accumulate, logits rounded to `logits_dtype` when given, e.g. the model's
  compute dtype) followed by `fused.candidates`, which picks the logits kernel
  or the twin as it always does. Same candidates either way up to float summation order.
  `temperature` is a Python float, as for `fused.candidates`.
  """
  shape = hidden.shape[:-1]
  flat = hidden.reshape(-1, hidden.shape[-1])
  kw = dict(temperature=temperature, mask_id=mask_id, eos_id=eos_id)
  wanted = (HEAD_KERNEL_ROWS[0] <= flat.shape[0] <= HEAD_KERNEL_ROWS[1]
            if fuse is None else fuse)
  if interpret or (wanted and use_kernel()):
    cand, conf = head_candidates_pallas(
        flat, head, seed, logits_dtype=logits_dtype, interpret=interpret, **kw)
  else:
    logits = jnp.dot(flat, head, preferred_element_type=jnp.float32)
    if logits_dtype is not None:
      logits = logits.astype(logits_dtype)
    cand, conf = fused.candidates(logits, seed, **kw)
  return cand.reshape(shape), conf.reshape(shape)
