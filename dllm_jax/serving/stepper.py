"""Rows that step through the sampler one block at a time (the server's path).

A `RowBatch` holds up to b rows of one (sampling settings, prompt bucket):
each row has its own prompt, seed, canvas, block KV cache and block index.
`step()` runs one compiled call that denoises every live row's next block
(`loop.blocks`, the walk `denoise` runs in one `lax.scan`), so between calls
rows can join (a fresh row starts at block 0 while others are at block 5),
leave (finished, or their client gone), and the batch can be re-packed to
another compiled batch size. A row computes what it computes alone: the same
walk, its own PRNG key, token for token equal to `Engine.generate` (which runs
all blocks in one call); tests/test_engine.py checks it.

The prefix cache recomputes the canvas from the current block to its end: a
window whose width depends on the block, static under jit, so its blocks
cannot be a traced per-row index; `steppable` is False for it and the batcher
runs such requests whole through `Engine.generate`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.sampling import generate as gen
from dllm_jax.sampling import logits_source, loop
from dllm_jax.serving.engine import Completion, Engine


def steppable(sampling: gen.SamplingConfig) -> bool:
  """Whether requests with these settings can step block by block."""
  return sampling.cache != 'prefix'


def _row_fn(engine: Engine, sampling: gen.SamplingConfig, p: int):
  """One row's block: (params, prompt [P], mask [P], seed [], carry, block [],
  fresh []) -> (carry, answer tokens [G]); carry = (SamplerState of a
  one-row batch, the logits source's carry). `fresh` starts the row over from
  its prompt; a row at block >= the number of blocks is left as it is."""
  config, g = engine.config, sampling.gen_length
  static, knobs = sampling.static_part(), gen.Knobs.of(sampling)

  def walk_of(params, prompt, mask, seed):
    canvas = jnp.concatenate([prompt, jnp.full((g,), sampling.mask_id, jnp.int32)])[None]
    seg = jnp.concatenate([mask, jnp.ones((g,), bool)])[None].astype(jnp.int32)
    pos = jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0)
    logits_fn, cached = logits_source.model_calls(params, config)
    return loop.blocks(logits_fn, canvas, seg, pos, jax.random.key(seed),
                       sampling=static, start=p, eos_id=config.ids.eos,
                       eot_id=config.ids.eot, knobs=knobs, cached=cached)

  def row(params, prompt, mask, seed, carry, block, fresh):
    walk = walk_of(params, prompt, mask, seed)
    pick = lambda on, a, b: jax.tree.map(lambda x, y: jnp.where(on, x, y), a, b)
    carry = pick(fresh, walk.init(), carry)
    new = walk.run(carry, jnp.minimum(block, walk.num_blocks - 1))
    carry = pick(block < walk.num_blocks, new, carry)
    return carry, carry[0].tokens[0, p:]

  return row, walk_of


@functools.partial(jax.jit, static_argnums=0)
def _zeros(specs):
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), specs)


@functools.lru_cache(maxsize=256)
def _repack(engine: Engine, sampling: gen.SamplingConfig, p: int, b: int, new_b: int):
  """The compiled (carry of b rows, rows to keep [new_b]) -> carry of new_b
  rows: one call (not one eager op per leaf), compiled ahead of time so that
  a carry from the step (whatever its sharding) never recompiles it."""
  one = _row_carry(engine, sampling, p)
  specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct((b, *a.shape), a.dtype), one)
  take = jax.jit(lambda tree, idx: jax.tree.map(lambda a: a[idx], tree))
  return take.lower(specs, jax.ShapeDtypeStruct((new_b,), jnp.int32)).compile()


@functools.lru_cache(maxsize=64)
def _row_carry(engine: Engine, sampling: gen.SamplingConfig, p: int):
  """Shapes of one row's carry (traced once per settings: a batch opens fast)."""
  _, walk_of = _row_fn(engine, sampling, p)
  return jax.eval_shape(lambda: walk_of(engine.params, jnp.zeros(p, jnp.int32),
                                        jnp.zeros(p, bool), jnp.uint32(0)).init())


class RowBatch:
  """Rows of one (sampling, prompt bucket p) stepping block by block; `jobs[i]`
  is the owner of row i (None: free)."""

  def __init__(self, engine: Engine, sampling: gen.SamplingConfig, p: int, b: int):
    self.engine, self.sampling, self.p = engine, sampling, p
    self.num_blocks = sampling.gen_length // sampling.block_length
    self.b = 0
    self.jobs: list = []
    self._resize(b)

  # --- compiled call ------------------------------------------------------------

  def _compiled(self, b: int):
    engine, sampling, p = self.engine, self.sampling, self.p

    def build():
      row, _ = _row_fn(engine, sampling, p)
      fn = jax.jit(jax.vmap(row, in_axes=(None, 0, 0, 0, 0, 0, 0)))
      return fn.lower(engine.params, *self._specs(b)).compile()
    return engine.compile_once(('blocks', sampling, p, b), build)

  def _specs(self, b: int):
    """Shapes of (prompts, masks, seeds, carry, block, fresh) for b rows."""
    s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
    one = _row_carry(self.engine, self.sampling, self.p)
    carry = jax.tree.map(lambda a: s((b, *a.shape), a.dtype), one)
    return (s((b, self.p), jnp.int32), s((b, self.p), jnp.bool_), s((b,), jnp.uint32),
            carry, s((b,), jnp.int32), s((b,), jnp.bool_))

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
      self.prompts = np.full((b, self.p), self.engine.config.ids.pad, np.int32)
      self.masks = np.zeros((b, self.p), bool)
      self.seeds = np.zeros(b, np.uint32)
      self.block = np.full(b, self.num_blocks, np.int32)
      self.fresh = np.zeros(b, bool)
      self.carry = _zeros(self._specs(b)[3])
      self.jobs, self.b = [None] * b, b
      return
    idx = np.asarray(keep + [0] * (b - len(keep)))  # Spare rows: copies, freed below.
    for name in ('prompts', 'masks', 'seeds', 'block', 'fresh'):
      setattr(self, name, getattr(self, name)[idx].copy())
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

  def admit(self, job, ids: np.ndarray, seed: int) -> None:
    """Puts a job's prompt in a free row; it starts at block 0 next step."""
    i = self.jobs.index(None)
    self.prompts[i] = self.engine.config.ids.pad
    self.prompts[i, self.p - len(ids):] = ids
    self.masks[i] = False
    self.masks[i, self.p - len(ids):] = True
    self.seeds[i], self.block[i], self.fresh[i], self.jobs[i] = seed, 0, True, job

  def leave(self, i: int) -> None:
    self.jobs[i], self.block[i] = None, self.num_blocks

  def step(self) -> list[tuple[int, np.ndarray, bool]]:
    """One block for every live row: [(row, answer tokens so far [end], finished)]."""
    live = self.live
    fn = self._compiled(self.b)
    # Copies: on CPU a NumPy argument may be read in place after the call
    # returns (asynchronous dispatch), and these arrays change next.
    host = [a.copy() for a in (self.prompts, self.masks, self.seeds)]
    self.carry, answer = fn(self.engine.params, *host, self.carry, self.block.copy(),
                            self.fresh.copy())
    self.fresh[:] = False
    answer = np.asarray(jax.device_get(answer))
    self.block[live] += 1
    bl = self.sampling.block_length
    return [(i, answer[i, :self.block[i] * bl], self.block[i] >= self.num_blocks)
            for i in live]

  def completion(self, i: int, tokens: np.ndarray, prompt_tokens: int) -> Completion:
    """Row i's finished answer (call before it leaves)."""
    steps, nfe = jax.device_get((self.carry[0].commit_step, self.carry[0].nfe))
    return self.engine.completion(tokens, steps[i, 0, self.p:], int(nfe[i]), prompt_tokens)


def warmup(engine: Engine, sampling: gen.SamplingConfig | None, n: int, b: int) -> None:
  """Compiles the block step for an n-token prompt in a batch of b rows, and
  the re-packing of such a batch to every compiled batch size."""
  sampling = engine.resolve(sampling)
  sampling.validate(n, engine.config.max_len)
  b = engine.batch_bucket(min(b, engine.max_batch))
  if not steppable(sampling):
    engine.warmup([(sampling, n, b)])
    return
  rows = RowBatch(engine, sampling, engine.prompt_bucket(n, sampling.gen_length), b)
  rows._compiled(b)  # pylint: disable=protected-access
  for size in engine.batch_sizes:
    _repack(engine, sampling, rows.p, b, size)
