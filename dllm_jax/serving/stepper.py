"""Rows that step through the sampler one block at a time (the server's path).

A `RowBatch` holds up to b rows of one (program settings, prompt bucket):
each row has its own prompt, seed, floats (temperature, threshold, ...),
canvas, block KV cache and block index.
`step()` runs one compiled call that denoises every live row's next block, so
between calls rows can join (a fresh row starts at its first block while others
are at block 5), leave (finished, or their client gone), and the batch can be
re-packed to another compiled batch size. A row computes what it computes
alone, with its own PRNG key.

Two samplers step so. The full-sequence sampler (`gen.SamplingConfig`) walks
`loop.blocks`, the walk `denoise` runs in one `lax.scan`: token for token what
`Engine.generate` runs in one call. The block sampler (`BlockSamplingConfig`,
block-diffusion checkpoints; `block_rows.py`) walks `block.BlockWalk`, whose
steps `block.generate` runs in one `lax.while_loop`; its prompt bucket is a
`BlockLayout`, a row finishes at the end of the block where it produced EOS,
and `Engine.generate` steps such rows here too (`run`). tests/test_engine.py
and tests/test_serve_block.py check both against the one-call samplers.

The prefix cache recomputes the canvas from the current block to its end: a
window whose width depends on the block, static under jit, so its blocks
cannot be a traced per-row index; `steppable` is False for it and the batcher
runs such requests whole through `Engine.generate`.
"""

from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.sampling import block as block_lib
from dllm_jax.sampling import generate as gen
from dllm_jax.sampling import proposers
from dllm_jax.serving import block_rows
from dllm_jax.serving.block_rows import BlockLayout
from dllm_jax.serving.engine import Completion, Engine


def steppable(sampling: gen.SamplingConfig | block_lib.BlockSamplingConfig) -> bool:
  """Whether requests with these settings can step block by block."""
  return is_block(sampling) or sampling.cache != 'prefix'


def is_block(sampling) -> bool:
  """Whether these are the block sampler's settings (block-diffusion models)."""
  return isinstance(sampling, block_lib.BlockSamplingConfig)


def _width(p: int | BlockLayout) -> int:
  return p.width if isinstance(p, BlockLayout) else p


def knobs_of(samplings) -> gen.Knobs | block_lib.BlockKnobs:
  """The rows' floats: host float32 arrays [len(samplings)] (one sampler's)."""
  if is_block(samplings[0]):
    return block_lib.BlockKnobs.stack(samplings)
  return gen.Knobs.stack(samplings)


def _row_fn(engine: Engine, sampling: gen.SamplingConfig, p: int):
  """One row's block: (params, prompt [P], mask [P], seed [], knobs, carry,
  block [], fresh []) -> (carry, answer tokens [G]); carry = (SamplerState of
  a one-row batch, the logits source's carry). `sampling` is the program's
  settings (`program_part`), `knobs` the row's floats. `fresh` starts the row
  over from its prompt; a row at block >= the number of blocks is left as it is."""
  config = engine.config
  proposer = proposers.build(sampling, config.ids.eos, config.ids.eot,
                             noised=sampling.temperature > 0)

  def walk_of(params, prompt, mask, seed, knobs):
    return gen.row_walk(params, prompt, mask, jax.random.key(seed), knobs, config=config,
                        sampling=sampling, proposer=proposer)

  def row(params, prompt, mask, seed, knobs, carry, block, fresh):
    walk = walk_of(params, prompt, mask, seed, knobs)
    pick = lambda on, a, b: jax.tree.map(lambda x, y: jnp.where(on, x, y), a, b)
    carry = pick(fresh, walk.init(), carry)
    new = walk.run(carry, jnp.minimum(block, walk.num_blocks - 1))
    carry = pick(block < walk.num_blocks, new, carry)
    return carry, carry[0].tokens[0, p:]

  return row, walk_of


def _batch_fn(engine: Engine, sampling, p: int | BlockLayout):
  """The (params, prompts [B, W], masks [B, W], seeds [B], knobs [B], carry,
  block [B], fresh [B]) -> (carry, answers [B, G], final tokens so far [B],
  finished [B]) of one block of every row; a row at block >= `num_blocks` is
  left as is."""
  pick = lambda on, a, b: jax.tree.map(
      lambda x, y: jnp.where(on.reshape(on.shape + (1,) * (x.ndim - 1)), x, y), a, b)
  rows = lambda f, n: jax.vmap(f, in_axes=(None,) + (0,) * n)
  if not is_block(sampling):
    row, _ = _row_fn(engine, sampling, p)
    bl = sampling.block_length
    nb = sampling.gen_length // bl

    def full(params, prompts, masks, seeds, knobs, carry, block, fresh):
      carry, answer = rows(row, 7)(params, prompts, masks, seeds, knobs, carry, block,
                                   fresh)
      return carry, answer, jnp.minimum(block + 1, nb) * bl, block + 1 >= nb
    return full
  init, row = block_rows.row_fns(engine.config, sampling, p)

  def blocks(params, prompts, masks, seeds, knobs, carry, block, fresh):
    # The prefill of joining rows runs only in a call that has some.
    carry = jax.lax.cond(
        jnp.any(fresh),
        lambda c: pick(fresh, rows(init, 4)(params, prompts, masks, seeds, knobs), c),
        lambda c: c, carry)
    return rows(row, 6)(params, prompts, masks, seeds, knobs, carry, block < p.blocks)
  return blocks


def _zeros(specs):
  """Zeros of a tree of shapes, in one compiled call (leaves: hashable)."""
  leaves, tree = jax.tree.flatten(specs)
  return jax.tree.unflatten(tree, _zero_leaves(tuple(leaves)))


@functools.partial(jax.jit, static_argnums=0)
def _zero_leaves(leaves):
  return [jnp.zeros(a.shape, a.dtype) for a in leaves]


def _repack(engine: Engine, sampling, p: int | BlockLayout, b: int, new_b: int):
  """The compiled (carry of b rows, rows to keep [new_b]) -> carry of new_b
  rows: one call (not one eager op per leaf), compiled ahead of time so that
  a carry from the step (whatever its sharding) never recompiles it; kept
  among the engine's programs."""

  def build():
    one = _row_carry(engine, sampling, p)
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct((b, *a.shape), a.dtype), one)
    take = jax.jit(lambda tree, idx: jax.tree.map(lambda a: a[idx], tree))
    return take.lower(specs, jax.ShapeDtypeStruct((new_b,), jnp.int32)).compile()
  return engine.compile_once(('repack', sampling, p, b, new_b), build)


# Carry shapes per engine: weak, so a cache never keeps an engine's parameters.
_CARRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _row_carry(engine: Engine, sampling, p: int | BlockLayout):
  """Shapes of one row's carry (traced once per program settings: a batch
  opens fast)."""
  shapes = _CARRIES.setdefault(engine, {})
  if (sampling, p) not in shapes:
    shapes[sampling, p] = _carry_shapes(engine, sampling, p)
  return shapes[sampling, p]


def _carry_shapes(engine: Engine, sampling, p: int | BlockLayout):
  w = _width(p)
  one = jax.tree.map(lambda a: a[0], knobs_of([sampling]))
  args = (engine.params, jnp.zeros(w, jnp.int32), jnp.ones(w, bool), jnp.uint32(0), one)
  if is_block(sampling):
    init, _ = block_rows.row_fns(engine.config, sampling, p)
    return jax.eval_shape(lambda: init(*args))
  _, walk_of = _row_fn(engine, sampling, p)
  return jax.eval_shape(lambda: walk_of(*args).init())


class RowBatch:
  """Rows of one (program settings, prompt bucket p) stepping block by block;
  `jobs[i]` is the owner of row i (None: free). p is the prompt length
  (full-sequence sampler) or a `BlockLayout` (block sampler). Rows whose
  settings differ only in their floats (`program_part`) share it, each with
  its own (`knobs`)."""

  def __init__(self, engine: Engine, sampling, p: int | BlockLayout, b: int):
    self.engine, self.p, self.width = engine, p, _width(p)
    self.sampling = sampling.program_part()
    # The most calls a row takes (the block sampler's rows may finish sooner).
    self.num_blocks = (p.blocks if is_block(sampling) else
                       sampling.gen_length // sampling.block_length)
    self.b = 0
    self.jobs: list = []
    self._resize(b)

  # --- compiled call ------------------------------------------------------------

  def _compiled(self, b: int):
    engine, sampling, p = self.engine, self.sampling, self.p

    def build():
      return jax.jit(_batch_fn(engine, sampling, p)).lower(
          engine.params, *self._specs(b)).compile()
    return engine.compile_once(('blocks', sampling, p, b), build)

  def _specs(self, b: int):
    """Shapes of (prompts, masks, seeds, knobs, carry, block, fresh) for b rows."""
    s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
    one = _row_carry(self.engine, self.sampling, self.p)
    carry = jax.tree.map(lambda a: s((b, *a.shape), a.dtype), one)
    knobs = jax.tree.map(lambda a: s((b,), a.dtype), knobs_of([self.sampling]))
    return (s((b, self.width), jnp.int32), s((b, self.width), jnp.bool_),
            s((b,), jnp.uint32), knobs, carry, s((b,), jnp.int32), s((b,), jnp.bool_))

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
      self.knobs = knobs_of([self.sampling] * b)  # Host arrays [b], set by `admit`.
      self.block = np.full(b, self.num_blocks, np.int32)
      self.fresh = np.zeros(b, bool)
      self.carry = _zeros(self._specs(b)[4])
      self.jobs, self.b = [None] * b, b
      return
    idx = np.asarray(keep + [0] * (b - len(keep)))  # Spare rows: copies, freed below.
    for name in ('prompts', 'masks', 'seeds', 'block', 'fresh'):
      setattr(self, name, getattr(self, name)[idx].copy())
    self.knobs = jax.tree.map(lambda a: a[idx].copy(), self.knobs)
    self.carry = _repack(self.engine, self.sampling, self.p, self.b, b)(
        self.carry, idx.astype(np.int32))
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
    for rows, one in zip(jax.tree.leaves(self.knobs), jax.tree.leaves(knobs_of([sampling]))):
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
    fn = self._compiled(self.b)
    # Copies: on CPU a NumPy argument may be read in place after the call
    # returns (asynchronous dispatch), and these arrays change next.
    host = [a.copy() for a in (self.prompts, self.masks, self.seeds)]
    knobs = jax.tree.map(np.copy, self.knobs)
    self.carry, answer, end, finished = fn(self.engine.params, *host, knobs, self.carry,
                                           self.block.copy(), self.fresh.copy())
    self.fresh[:] = False
    answer, end, finished = jax.device_get((answer, end, finished))
    self.block[live] += 1
    return [(i, np.asarray(answer[i, :end[i]]), bool(finished[i])) for i in live]

  def completion(self, i: int, tokens: np.ndarray, prompt_tokens: int) -> Completion:
    """Row i's answer `tokens` (all, or final so far: a stop sequence ended it)
    as a `Completion` (call before it leaves). The block sampler records no
    commit steps (-1)."""
    # Whole arrays to the host, then NumPy indexing (an eager jax index per row
    # would compile one program per row index).
    if is_block(self.sampling):
      steps = np.full(len(tokens), -1, np.int32)
      nfe, decisions = jax.device_get((self.carry['nfe'], self.carry['decisions']))
      prefill = block_lib.prefill_forwards(self.sampling, self.p.first_block)
      return self.engine.completion(tokens, steps, int(nfe[i]), prompt_tokens,
                                    decisions=int(decisions[i, 0]),
                                    forwards=int(nfe[i]) + prefill)
    steps, nfe = jax.device_get((self.carry[0].commit_step, self.carry[0].nfe))
    steps = steps[i, 0, self.width:self.width + len(tokens)]
    return self.engine.completion(tokens, steps, int(nfe[i]), prompt_tokens)


def run(engine: Engine, sampling, p: int | BlockLayout, prompts: list[np.ndarray],
        seeds: list[int], samplings) -> list[Completion]:
  """Steps rows (at most `engine.max_batch`) from their prompts [P_i] to their
  ends, all joining at once (`Engine.generate`'s block-sampler path); row i
  with the settings `samplings[i]` (resolved, all of one `program_part`)."""
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


def warmup(engine: Engine, sampling, n: int, b: int) -> None:
  """Compiles the block step for an n-token prompt in a batch of b rows, and
  the re-packing of such a batch to every compiled batch size (for every
  request of these settings but for their floats: `program_part`)."""
  sampling = engine.resolve(sampling)
  engine.check_settings(sampling, n)
  b = engine.batch_bucket(min(b, engine.max_batch))
  if not steppable(sampling):
    engine.warmup([(sampling, n, b)])
    return
  rows = RowBatch(engine, sampling, engine.bucket(n, sampling), b)
  rows._compiled(b)  # pylint: disable=protected-access
  for size in engine.batch_sizes:
    _repack(engine, rows.sampling, rows.p, b, size)
