"""Rows that step through a sampler one block at a time (the server's path).

A `RowBatch` holds up to b rows of one (program settings, prompt bucket):
each row has its own prompt, seed, floats (temperature, threshold, ...),
state (canvas, KV cache, ...) and block index. `step()` runs one compiled
call that runs every live row's next block, so between calls rows can join
(a fresh row starts at its first block while others are at block 5), leave
(finished, or their client gone), and the batch can be re-packed to another
compiled batch size. A row computes what it computes alone, with its own
PRNG key.

What a row is comes from its sampler's `sampler.SamplerProgram` (`row_fns`:
its first state and one block of it; `finish`: its `Completion`), looked up
by the settings' type: the full-sequence sampler (`full_rows.py`, the walk
`denoise` runs in one `lax.scan`), the block sampler (`block_rows.py`, the
walk `block.generate` runs in one `lax.while_loop`; a row finishes at the end
of the block where it produced EOS), or any registered one.
tests/test_engine.py and tests/test_serve_block.py check both built-in ones
against their one-call samplers.

The programs a batch needs are keyed (`step_key`, `repack_key`) so that the
batcher can compile a missing one off its loop (`needs`) while it steps the
batches whose programs exist.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.serving import protocol as sampler_lib
from dllm_jax.serving.records import Completion


def steppable(sampling) -> bool:
  """Whether requests with these settings can step block by block."""
  return sampler_lib.of(sampling).steppable(sampling)


def _batch_fn(engine, sampling, p, k: int | None = None):
  """The (params, prompts [B, W], masks [B, W], seeds [B], knobs [B], carry,
  block [B], fresh [B]) -> (carry, answers [B, G], final tokens so far [B],
  finished [B]) of one block of every row; fresh rows start from their
  prompts (the first state computed only in a call that has some); a row at
  block >= its number of blocks is left as it is. With a static block index
  k (`SamplerProgram.static_blocks`), only the rows at block k step."""
  init, step = sampler_lib.of(sampling).row_fns(engine, sampling, p)
  pick = lambda on, a, b: jax.tree.map(
      lambda x, y: jnp.where(on.reshape(on.shape + (1,) * (x.ndim - 1)), x, y), a, b)
  rows = lambda f, n: jax.vmap(f, in_axes=(None,) + (0,) * n)

  def blocks(params, prompts, masks, seeds, knobs, carry, block, fresh):
    if k in (None, 0):
      carry = jax.lax.cond(
          jnp.any(fresh),
          lambda c: pick(fresh, rows(init, 4)(params, prompts, masks, seeds, knobs), c),
          lambda c: c, carry)
    if k is None:
      return rows(step, 6)(params, prompts, masks, seeds, knobs, carry, block)
    at_k = lambda *a: step(*a, k)
    new, *out = rows(at_k, 5)(params, prompts, masks, seeds, knobs, carry)
    return (pick(block == k, new, carry), *out)
  return blocks


def _zeros(specs):
  """Zeros of a tree of shapes, in one compiled call (leaves: hashable)."""
  leaves, tree = jax.tree.flatten(specs)
  return jax.tree.unflatten(tree, _zero_leaves(tuple(leaves)))


@functools.partial(jax.jit, static_argnums=0)
def _zero_leaves(leaves):
  return [jnp.zeros(a.shape, a.dtype) for a in leaves]


# Carry shapes per engine: weak, so a cache never keeps an engine's parameters.
_CARRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _row_carry(engine, sampling, p):
  """Shapes of one row's carry (traced once per program settings: a batch
  opens fast)."""
  shapes = _CARRIES.setdefault(engine, {})
  if (sampling, p) not in shapes:
    program = sampler_lib.of(sampling)
    w = program.width(p)
    init, _ = program.row_fns(engine, sampling, p)
    one = jax.tree.map(lambda a: a[0], program.stack([sampling]))
    args = (engine.params, jnp.zeros(w, jnp.int32), jnp.ones(w, bool), jnp.uint32(0), one)
    shapes[sampling, p] = jax.eval_shape(lambda: init(*args))
  return shapes[sampling, p]


def _specs(engine, sampling, p, b: int):
  """Shapes of (prompts, masks, seeds, knobs, carry, block, fresh) for b rows."""
  s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  w = sampler_lib.of(sampling).width(p)
  carry = jax.tree.map(lambda a: s((b, *a.shape), a.dtype), _row_carry(engine, sampling, p))
  knobs = jax.tree.map(lambda a: s((b,), a.dtype), sampler_lib.of(sampling).stack([sampling]))
  return (s((b, w), jnp.int32), s((b, w), jnp.bool_), s((b,), jnp.uint32), knobs, carry,
          s((b,), jnp.int32), s((b,), jnp.bool_))


def step_key(sampling, p, b: int, k: int | None = None) -> tuple:
  return ('blocks', sampling, p, b) + (() if k is None else (k,))


def repack_key(sampling, p, b: int, new_b: int) -> tuple:
  return ('repack', sampling, p, b, new_b)


def _block_indices(sampling, p) -> list[int | None]:
  """The static block indices of a batch's programs ([None]: one program
  takes every block index traced)."""
  program = sampler_lib.of(sampling)
  if not program.static_blocks(sampling):
    return [None]
  return list(range(program.num_blocks(sampling, p)))


def _build_step(engine, sampling, p, b: int, new: bool, k: int | None = None):
  def build():
    specs = _specs(engine, sampling, p, b)
    fn = jax.jit(_batch_fn(engine, sampling, p, k)).lower(engine.params, *specs).compile()
    if new:
      _zeros(specs[4])  # A new batch's first state: compiled here, not on the loop.
    return fn
  return build


def _build_repack(engine, sampling, p, b: int, new_b: int):
  """The compiled (carry of b rows, rows to keep [new_b]) -> carry of new_b
  rows: one call (not one eager op per leaf), compiled ahead of time so that
  a carry from the step (whatever its sharding) never recompiles it."""
  def build():
    one = _row_carry(engine, sampling, p)
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct((b, *a.shape), a.dtype), one)
    take = jax.jit(lambda tree, idx: jax.tree.map(lambda a: a[idx], tree))
    return take.lower(specs, jax.ShapeDtypeStruct((new_b,), jnp.int32)).compile()
  return build


def needs(engine, sampling, p, b: int, new_b: int) -> list[tuple[Hashable, Callable]]:
  """The (key, build) of each program a batch of (program settings
  `sampling`, bucket p) at b rows (0: a new batch) needs to step at new_b."""
  out = [(step_key(sampling, p, new_b, k), _build_step(engine, sampling, p, new_b, not b, k))
         for k in _block_indices(sampling, p)]
  if b and b != new_b:
    out.append((repack_key(sampling, p, b, new_b),
                _build_repack(engine, sampling, p, b, new_b)))
  return out


class RowBatch:
  """Rows of one (program settings, prompt bucket p) stepping block by block;
  `jobs[i]` is the owner of row i (None: free). Rows whose settings differ
  only in their floats (`program_part`) share it, each with its own (`knobs`)."""

  def __init__(self, engine, sampling, p, b: int):
    self.engine, self.p = engine, p
    self.sampling = sampling.program_part()
    self.program = sampler_lib.of(sampling)
    self.width = self.program.width(p)
    # The most calls a row takes (rows may finish sooner).
    self.num_blocks = self.program.num_blocks(self.sampling, p)
    self.b = 0
    self.jobs: list = []
    self.service = 0.0  # Seconds of block calls (the batcher's fair share).
    self.last_call = 0.0  # Seconds of the latest.
    self._resize(b)

  def _compiled(self, b: int, k: int | None = None):
    e, sc, p = self.engine, self.sampling, self.p
    return e.compile_once(step_key(sc, p, b, k), _build_step(e, sc, p, b, False, k))

  # --- rows -----------------------------------------------------------------------

  @property
  def live(self) -> list[int]:
    return [i for i, j in enumerate(self.jobs) if j is not None]

  def _resize(self, b: int) -> None:
    """Re-packs the live rows into b rows (a compiled batch size)."""
    keep = self.live
    if len(keep) > b:
      raise ValueError(f'{len(keep)} live rows do not fit {b} rows.')
    if not self.b:  # New: every row free.
      self.prompts = np.full((b, self.width), self.engine.config.ids.pad, np.int32)
      self.masks = np.zeros((b, self.width), bool)
      self.seeds = np.zeros(b, np.uint32)
      self.knobs = self.program.stack([self.sampling] * b)  # Host [b], set by `admit`.
      self.block = np.full(b, self.num_blocks, np.int32)
      self.fresh = np.zeros(b, bool)
      self.carry = _zeros(_specs(self.engine, self.sampling, self.p, b)[4])
      self.jobs, self.b = [None] * b, b
      return
    idx = np.asarray(keep + [0] * (b - len(keep)))  # Spare rows: copies, freed below.
    for name in ('prompts', 'masks', 'seeds', 'block', 'fresh'):
      setattr(self, name, getattr(self, name)[idx].copy())
    self.knobs = jax.tree.map(lambda a: a[idx].copy(), self.knobs)
    e, sc, p = self.engine, self.sampling, self.p
    repack = e.compile_once(repack_key(sc, p, self.b, b), _build_repack(e, sc, p, self.b, b))
    self.carry = repack(self.carry, idx.astype(np.int32))
    self.jobs = [self.jobs[i] for i in keep] + [None] * (b - len(keep))
    self.block[len(keep):] = self.num_blocks
    self.b = b

  def fit(self, n: int) -> None:
    """Resizes to the compiled batch size for n rows (grow to admit, shrink
    when rows left)."""
    b = self.engine.batch_bucket(max(1, n))
    if b != self.b:
      self._resize(b)

  def admit(self, job, ids: np.ndarray, seed: int, sampling) -> None:
    """Puts a job's prompt in a free row with the floats of its settings
    (`sampling`, resolved: of this batch's program); it starts at its first
    block next step."""
    if sampling.program_part() != self.sampling:
      raise ValueError(f'settings {sampling} do not fit the batch of {self.sampling}.')
    i = self.jobs.index(None)
    for rows, one in zip(jax.tree.leaves(self.knobs),
                         jax.tree.leaves(self.program.stack([sampling]))):
      rows[i] = one[0]
    self.prompts[i] = self.engine.config.ids.pad
    self.prompts[i, self.width - len(ids):] = ids
    self.masks[i] = False
    self.masks[i, self.width - len(ids):] = True
    self.seeds[i], self.block[i], self.fresh[i], self.jobs[i] = seed, 0, True, job

  def leave(self, i: int) -> None:
    self.jobs[i], self.block[i] = None, self.num_blocks

  def step(self) -> list[tuple[int, np.ndarray, bool]]:
    """One block for every live row: [(row, answer tokens final so far [end],
    finished)]; a finished block-sampler row's tokens end at its first EOS."""
    live = self.live
    # Copies: on CPU a NumPy argument may be read in place after the call
    # returns (asynchronous dispatch), and these arrays change next.
    host = [a.copy() for a in (self.prompts, self.masks, self.seeds)]
    knobs = jax.tree.map(np.copy, self.knobs)
    block, fresh = self.block.copy(), self.fresh.copy()
    static = _block_indices(self.sampling, self.p) != [None]
    out = {}
    # One call (or, with static block indices, one per block index a row is at).
    for k in sorted({int(block[i]) for i in live}) if static else [None]:
      fn = self._compiled(self.b, k)
      self.carry, answer, end, finished = fn(self.engine.params, *host, knobs, self.carry,
                                             block, fresh)
      answer, end, finished = jax.device_get((answer, end, finished))
      out.update({i: (np.asarray(answer[i, :end[i]]), bool(finished[i]))
                  for i in live if k is None or block[i] == k})
    self.fresh[:] = False
    self.block[live] += 1
    return [(i, *out[i]) for i in live]

  def completion(self, i: int, tokens: np.ndarray, prompt_tokens: int) -> Completion:
    """Row i's answer `tokens` (all, or final so far: a stop sequence or its
    max_tokens ended it) as a `Completion` (call before it leaves)."""
    return self.program.finish(self.engine, self.sampling, self.p, self.carry, i, tokens,
                               prompt_tokens)


def run(engine, sampling, p, prompts: list[np.ndarray], seeds: list[int],
        samplings) -> list[Completion]:
  """Steps rows (at most `engine.max_batch`) from their prompts [P_i] to their
  ends, all joining at once; row i with the settings `samplings[i]`
  (resolved, all of one `program_part`)."""
  rows = RowBatch(engine, sampling, p, engine.batch_bucket(len(prompts)))
  for k, (ids, seed, sc) in enumerate(zip(prompts, seeds, samplings)):
    rows.admit(k, ids, seed, sc)
  out = {}
  while rows.live:
    for i, tokens, finished in rows.step():
      if finished:
        k = rows.jobs[i]
        out[k] = rows.completion(i, tokens, len(prompts[k]))
        rows.leave(i)
  return [out[k] for k in range(len(prompts))]


def warmup(engine, sampling, n: int, b: int) -> None:
  """Compiles the block step for an n-token prompt in a batch of b rows, and
  the re-packing of such a batch to every compiled batch size (for every
  request of these settings but for their floats: `program_part`)."""
  sampling = engine.resolve(sampling)
  engine.check_settings(sampling, n)
  b = engine.batch_bucket(min(b, engine.max_batch))
  if not steppable(sampling):
    engine.warmup([(sampling, n, b)])
    return
  sc, p = sampling.program_part(), engine.bucket(n, sampling)
  for k in _block_indices(sc, p):
    engine.compile_once(step_key(sc, p, b, k), _build_step(engine, sc, p, b, True, k))
  for size in engine.batch_sizes:
    engine.compile_once(repack_key(sc, p, b, size), _build_repack(engine, sc, p, b, size))
