"""The denoising loop: walks blocks and steps, nothing else.

canvas = [prompt | MASK * gen_length] is split into blocks of `block_length`
from `start`; each step asks the logits source for the current block's logits
(the model attends over the whole canvas, its head runs on the block only), the
proposer for candidates and confidences, and the commit rule for which masked
positions of the block to commit. Scheduled rules run `steps / num_blocks`
steps per block in a `lax.scan`, skipping (no forward) a step whose schedule
commits nothing in any row; adaptive rules run a `lax.while_loop` until the
block has no masks. Blocks are a `lax.scan` (a Python loop with the prefix
cache, whose window shrinks block by block). `blocks` hands the same walk out
one block at a time (the server steps rows block by block).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from dllm_jax.sampling import logits_source, proposers, rules
from dllm_jax.sampling.config import Knobs, SamplingConfig
from dllm_jax.sampling.schedule import tokens_per_step


@flax.struct.dataclass
class SamplerState:
  """The loop carry: the canvas and, per position, the step that committed it."""

  tokens: jax.Array  # [B, T] int32.
  # [B, T] int32: the step that committed each position (-1: never masked).
  # Steps are numbered as the schedule numbers them (a skipped step keeps its
  # number) for scheduled rules, by model evaluations for adaptive ones.
  commit_step: jax.Array
  # [] int32: model evaluations (steps actually run): every forward of the
  # run (a cache refresh is its step's forward), the total to divide by.
  nfe: jax.Array
  # [B] int32: the steps that decided row b's tokens (its schedule committed
  # some; adaptive rules: its block had masks), what the row takes alone.
  decisions: jax.Array


@dataclasses.dataclass(frozen=True)
class _Walk:
  """What every step of one run shares (built once per trace)."""

  source: object  # logits_source: init / block_logits.
  proposer: object  # proposers: propose.
  rule: object  # rules: select (+ scheduled).
  key: jax.Array
  knobs: Knobs
  mask_id: int
  block_length: int
  steps_per_block: int

  def _block(self, a, block_start):
    return jax.lax.dynamic_slice_in_dim(a, block_start, self.block_length, axis=1)

  def step(self, state: SamplerState, carry, block_start, i, index, k):
    """One step on the block at `block_start`: its i-th, `index`-th overall
    (the PRNG key `fold_in(key, index)` and the `commit_step` it writes); `k`
    [B] the schedule's tokens for it. Returns (state, source carry)."""
    logits, carry = self.source.block_logits(state.tokens, block_start, i, carry)
    x = self._block(state.tokens, block_start)
    candidates, confidence = self.proposer.propose(
        logits, jax.random.fold_in(self.key, index), self.knobs)
    commit = self.rule.select(confidence, x == self.mask_id,
                              rules.StepContext(k=k, knobs=self.knobs))
    put = lambda full, blk: jax.lax.dynamic_update_slice_in_dim(
        full, blk, block_start, axis=1)
    committed = jnp.where(commit, jnp.asarray(index, jnp.int32),
                          self._block(state.commit_step, block_start))
    decides = jnp.any(x == self.mask_id, axis=1)
    if self.rule.scheduled:
      decides = decides & (k > 0)
    return SamplerState(tokens=put(state.tokens, jnp.where(commit, candidates, x)),
                        commit_step=put(state.commit_step, committed),
                        nfe=state.nfe + 1,
                        decisions=state.decisions + decides.astype(jnp.int32)), carry

  def scheduled_block(self, state, carry, block_start, first_index):
    """The schedule's steps; one that commits nothing in every row is skipped
    (its tokens would not change) but keeps its step number, so the steps
    after it draw the same randomness as the reference's."""
    num_masked = jnp.sum(self._block(state.tokens, block_start) == self.mask_id, 1)

    def body(c, i):
      st, cache = c
      k = tokens_per_step(num_masked, self.steps_per_block, i)
      return jax.lax.cond(
          jnp.any(k > 0),
          lambda: self.step(st, cache, block_start, i, first_index + i, k),
          lambda: (st, cache)), None
    return jax.lax.scan(body, (state, carry), jnp.arange(self.steps_per_block))[0]

  def adaptive_block(self, state, carry, block_start, first_index):
    """Steps until the block has no masks (each commits >= 1 per masked row)."""
    del first_index  # Adaptive steps are numbered by model evaluations.
    masked = lambda st: self._block(st.tokens, block_start) == self.mask_id
    num_masked = jnp.sum(masked(state), axis=1)

    def cond(c):
      st, _, i = c
      return jnp.any(masked(st)) & (i < self.block_length)

    def body(c):
      st, cache, i = c
      k = tokens_per_step(num_masked, self.steps_per_block, i)
      st, cache = self.step(st, cache, block_start, i, st.nfe, k)
      return st, cache, i + 1
    state, carry, _ = jax.lax.while_loop(cond, body, (state, carry, jnp.int32(0)))
    return state, carry


@dataclasses.dataclass(frozen=True)
class BlockWalk:
  """One run's blocks, to be walked one at a time: `init()` is the carry
  before block 0 (the state and the logits source's carry), `run(carry, block)`
  the carry after denoising block `block` (traced, except with the prefix
  cache, whose window width depends on it). `denoise` walks them all."""

  walk: _Walk
  canvas: jax.Array
  start: int
  num_blocks: int
  scheduled: bool

  def init(self):
    b, t = self.canvas.shape
    state = SamplerState(tokens=self.canvas.astype(jnp.int32),
                         commit_step=jnp.full((b, t), -1, jnp.int32),
                         nfe=jnp.zeros((), jnp.int32),
                         decisions=jnp.zeros((b,), jnp.int32))
    return state, self.walk.source.init(self.canvas)

  def run(self, carry, block):
    w = self.walk
    run_block = w.scheduled_block if self.scheduled else w.adaptive_block
    return run_block(*carry, self.start + block * w.block_length,
                     block * w.steps_per_block)


def blocks(logits_fn: logits_source.LogitsFn | None, canvas: jax.Array,
           segment_ids: jax.Array | None, positions: jax.Array | None,
           key: jax.Array, *, sampling: SamplingConfig, start: int, eos_id: int,
           eot_id: int, knobs: Knobs | None = None, rule=None, proposer=None,
           cached: logits_source.CachedModel | None = None) -> BlockWalk:
  """The `BlockWalk` of one run; arguments as for `denoise`."""
  sc = sampling
  num_blocks = (canvas.shape[1] - start) // sc.block_length
  knobs = Knobs.of(sc) if knobs is None else knobs
  rule = rules.RULES[sc.parallel]() if rule is None else rule
  if proposer is None:
    proposer = proposers.build(sc, eos_id, eot_id)
  source = logits_source.build(canvas, segment_ids, positions, sampling=sc,
                               knobs=knobs, logits_fn=logits_fn, cached=cached)
  walk = _Walk(source, proposer, rule, key, knobs, sc.mask_id, sc.block_length,
               sc.steps // num_blocks)
  return BlockWalk(walk, canvas, start, num_blocks, rule.scheduled)


def denoise(logits_fn: logits_source.LogitsFn | None, canvas: jax.Array,
            segment_ids: jax.Array | None, positions: jax.Array | None,
            key: jax.Array, *, sampling: SamplingConfig, start: int, eos_id: int,
            eot_id: int, knobs: Knobs | None = None, rule=None, proposer=None,
            cached: logits_source.CachedModel | None = None) -> SamplerState:
  """The sampling loop (pure, traceable; callers jit it).

  Args:
    logits_fn: the mask predictor (see `logits_source.LogitsFn`).
    canvas: int [B, T]; positions equal to `sampling.mask_id` are generated.
    segment_ids, positions: passed to the model (left padding), or None.
    key: PRNG key; step i (see `SamplerState.commit_step`) uses `fold_in(key, i)`.
    sampling: the settings; `mask_id` must be set. Its float fields are read
      only through `knobs`.
    start: first position of the first block; blocks cover [start, T).
    eos_id, eot_id: for the EOS options.
    knobs: the traced floats (default: `sampling`'s own).
    rule, proposer: override `rules.RULES[sampling.parallel]()` and
      `proposers.PROPOSERS[sampling.noise](...)`.
    cached: the model's cached calls; needed when `sampling.cache` != 'none'.

  Returns:
    the final `SamplerState`.
  """
  return run_all(blocks(logits_fn, canvas, segment_ids, positions, key,
                        sampling=sampling, start=start, eos_id=eos_id, eot_id=eot_id,
                        knobs=knobs, rule=rule, proposer=proposer, cached=cached),
                 sampling)


def run_all(walk: BlockWalk, sampling: SamplingConfig) -> SamplerState:
  """Every block of `walk` from its start: the final `SamplerState`."""
  carry = walk.init()
  if sampling.cache == 'prefix':  # Static window widths: one traced copy per block.
    for block in range(walk.num_blocks):
      carry = walk.run(carry, block)
    return carry[0]
  carry, _ = jax.lax.scan(lambda c, block: (walk.run(c, block), None),
                          carry, jnp.arange(walk.num_blocks))
  return carry[0]
