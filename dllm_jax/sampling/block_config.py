"""The block sampler's settings: `BlockSamplingConfig` (hashable, a jit static
argument) and `BlockKnobs`, its floats traced.

`program_part()` is what a compiled program is specialised to: the shapes and
rules, and whether noise is drawn (temperature > 0) and tokens edited
(editing_threshold > 0); the values of temperature, threshold, factor and
editing_threshold travel as `BlockKnobs` (float32 scalars), so
changing them reuses the program, and a server batch mixes rows that differ
only there.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import numpy as np

PARALLEL = ('fixed', 'threshold', 'factor')
THRESHOLD_RULES = ('llada2', 'dinfer')
CONFIDENCES = ('tempered', 'plain')


@dataclasses.dataclass(frozen=True)
class BlockSamplingConfig:
  """Knobs of the block sampler (hashable: static under jit; the floats are
  read through `BlockKnobs`, never from the config a program is built with).

  steps: per block; the fixed schedule commits block_length / steps' tokens per
    step, split evenly (LLaDA2's `_get_num_transfer_tokens`), where steps' =
    min(steps, gen_length // minimal_topk) (`decision_steps`).
  minimal_topk: LLaDA2's cap on the steps, applied before the schedule is
    built (1: steps' = min(steps, gen_length); gen_length 6, blocks of 8,
    steps 8 commit [2, 2, 1, 1, 1, 1]); the schedule is unused when
    `min_tokens` > 0 (as LLaDA2.1's `generate` computes and never reads it).
  parallel: 'fixed' (the schedule's n_s most confident), 'threshold' or
    'factor' (Fast-dLLM: the largest n whose n-th confidence >= 1 - factor/(n+1)).
  threshold_rule: 'llada2' every masked position with confidence > threshold if
    there are at least n_s of them, else the n_s most confident; 'dinfer'
    confidence >= min(threshold, best - 1e-5) (at least the best one).
  min_tokens: > 0 replaces the schedule's n_s by this constant (LLaDA2.1's
    `num_to_transfer`).
  editing_threshold: > 0 turns on LLaDA2.1 token editing: a committed answer
    token of the current block whose candidate differs and has probability >
    this is rewritten; the block ends when a step with no masks edits nothing, or
    after max_post_steps steps without masks.
  temperature: 0 takes the argmax; > 0 draws each position's candidate from
    softmax(logits / temperature) by Gumbel-max, argmax(logits / T + G) with G
    i.i.d. standard Gumbel: an exact sample of that categorical distribution,
    the one LLaDA2's `generate` draws with `torch.multinomial` (the mask token
    excluded; no top-k / top-p here).
  confidence: the probability a candidate is ranked by: 'tempered' under
    softmax(logits / temperature) (LLaDA2 / LLaDA2.1 `generate`), 'plain' under
    softmax(logits) (dInfer, LLaDA); the same at temperature 0.
  eos_early_stop: LLaDA2's `eos_early_stop`. Without editing (LLaDA2.0):
    False ends a row after the block whose answer holds an EOS; True also ends
    it right after a step that committed an EOS when no MASK lies between its
    prompt and its first EOS, and when that EOS lies in the last block's tail
    (past gen_length) the answer is longer than gen_length, as the reference
    returns it (`answer_width`). With editing (LLaDA2.1): False decodes every
    block whatever the EOS (the answer is cut at the first EOS all the same);
    True ends a row after a block whose answer so far holds an EOS and no MASK.
  cache: False recomputes the whole canvas each step (the reference).
  fuse_write: write a finished block's keys/values in the next block's first
    step (a 2-block window) instead of a separate forward.
  """

  gen_length: int = 256
  block_length: int = 32
  steps: int = 32
  parallel: str = 'threshold'
  threshold_rule: str = 'llada2'
  threshold: float = 0.95
  factor: float = 1.0
  min_tokens: int = 0
  temperature: float = 0.0
  confidence: str = 'tempered'
  editing_threshold: float = 0.0
  max_post_steps: int = 16
  minimal_topk: int = 1
  eos_early_stop: bool = False
  cache: bool = True
  fuse_write: bool = False

  def validate(self) -> None:
    """One-line ValueErrors for bad values."""
    for name in ('gen_length', 'block_length', 'steps', 'minimal_topk'):
      if getattr(self, name) <= 0:
        raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
    if self.parallel not in PARALLEL:
      raise ValueError(f'unknown parallel rule {self.parallel!r}; known: {PARALLEL}.')
    if self.threshold_rule not in THRESHOLD_RULES:
      raise ValueError(f'unknown threshold_rule {self.threshold_rule!r}; known: '
                       f'{THRESHOLD_RULES}.')
    if self.confidence not in CONFIDENCES:
      raise ValueError(f'unknown confidence {self.confidence!r}; known: {CONFIDENCES}.')
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f'threshold must be in (0, 1], got {self.threshold}.')
    for name in ('temperature', 'min_tokens', 'editing_threshold', 'max_post_steps'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')
    if self.factor <= 0:
      raise ValueError(f'factor must be positive, got {self.factor}.')
    if self.fuse_write and not self.cache:
      raise ValueError('fuse_write needs cache=True.')
    if self.minimal_topk > self.gen_length:
      raise ValueError(f'minimal_topk must be at most gen_length {self.gen_length} '
                       f'(steps = min(steps, gen_length // minimal_topk) >= 1), got '
                       f'{self.minimal_topk}.')

  def decision_steps(self) -> int:
    """The steps the schedule is built for: min(steps, gen_length //
    minimal_topk), LLaDA2 / LLaDA2.1 `generate`'s first line."""
    return min(self.steps, self.gen_length // self.minimal_topk)

  def early_in_block(self) -> bool:
    """Whether a row may end in the middle of a block (LLaDA2.0 with
    `eos_early_stop`)."""
    return self.eos_early_stop and self.editing_threshold <= 0

  def answer_width(self) -> int:
    """Answer tokens a `BlockSample` holds per row: gen_length, or up to the
    end of the row's last block (gen_length + block_length - 1) when a row may
    end at an EOS in that block's tail (`early_in_block`), as LLaDA2.0's
    `generate` returns such an answer whole."""
    return self.gen_length + (self.block_length - 1 if self.early_in_block() else 0)

  def program_part(self) -> BlockSamplingConfig:
    """This config with each traced float at one fixed value that keeps only
    what changes the program: noise drawn or not (temperature 1.0 / 0.0),
    editing on or off (editing_threshold 1.0 / 0.0). Equal for configs that
    differ only in `BlockKnobs` values; the jit static argument."""
    default = BlockSamplingConfig()
    return dataclasses.replace(
        self, temperature=float(self.temperature > 0), threshold=default.threshold,
        factor=default.factor, editing_threshold=float(self.editing_threshold > 0))


@flax.struct.dataclass
class BlockKnobs:
  """The block sampler's float settings, traced: float32 [] for one run ([B]
  from `stack`: one per row, for callers that `vmap` over rows; a sampler run
  itself takes [] knobs)."""

  temperature: jax.Array
  threshold: jax.Array
  factor: jax.Array
  editing_threshold: jax.Array

  @classmethod
  def of(cls, sc: BlockSamplingConfig) -> BlockKnobs:
    """Host float32 scalars of one config."""
    return jax.tree.map(lambda a: a[0], cls.stack([sc]))

  @classmethod
  def stack(cls, scs: Sequence[BlockSamplingConfig]) -> BlockKnobs:
    """Host float32 arrays [len(scs)], one field each."""
    pick = lambda name: np.asarray([getattr(sc, name) for sc in scs], np.float32)
    return cls(**{f.name: pick(f.name) for f in dataclasses.fields(cls)})
