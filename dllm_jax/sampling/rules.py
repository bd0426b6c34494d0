"""Commit rules: which of a block's masked positions a step commits.

A rule is a small frozen object with one method, `select(confidence, eligible,
ctx) -> commit`, and a class flag `scheduled`: a scheduled rule runs the
`steps` of the LLaDA schedule (the loop skips a step whose schedule commits
nothing in any row); an adaptive one runs until its block has no masks. A new
rule is one class here plus its entry in `RULES` (keyed by
`SamplingConfig.parallel`); float settings it reads come from `ctx.knobs` (an
adaptive rule of one function and one knob subclasses `KnobRule`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from dllm_jax.sampling import remasking


@flax.struct.dataclass
class StepContext:
  """What a rule may read besides the confidences."""

  k: jax.Array  # [B] int: tokens the LLaDA schedule commits this step, per row.
  knobs: object  # config.Knobs (traced floats: threshold, factor, ...).


def select_threshold(confidence: jax.Array, eligible: jax.Array,
                     threshold: float | jax.Array) -> jax.Array:
  """Fast-dLLM's threshold rule: every eligible position with confidence >=
  `threshold`, and always the most confident one. [B, T] -> bool [B, T]."""
  top = (remasking.rank_by_confidence(confidence, eligible) == 0) & eligible
  return eligible & ((confidence >= threshold) | top)


def select_factor(confidence: jax.Array, eligible: jax.Array,
                  factor: float | jax.Array) -> jax.Array:
  """Fast-dLLM's factor rule: with eligible confidences sorted descending
  c_1 >= c_2 >= ..., commit the n most confident for the largest n with
  c_n >= 1 - factor / (n + 1) (at least one). [B, T] -> bool [B, T]."""
  rank = remasking.rank_by_confidence(confidence, eligible)
  t = confidence.shape[1]
  ordered = jnp.sort(jnp.where(eligible, confidence, -jnp.inf), axis=1)[:, ::-1]
  n = jnp.arange(1, t + 1, dtype=jnp.float32)
  passes = ordered >= 1.0 - factor / (n + 1.0)
  # The thresholds rise with n while the sorted confidences fall: the passing
  # ranks are a prefix, and their count is the largest n.
  count = jnp.maximum(jnp.sum(passes, axis=1), 1)
  return (rank < count[:, None]) & eligible


@dataclasses.dataclass(frozen=True)
class TopK:
  """LLaDA: the k most confident eligible positions, k from the schedule."""

  scheduled: ClassVar[bool] = True

  def select(self, confidence: jax.Array, eligible: jax.Array,
             ctx: StepContext) -> jax.Array:
    return remasking.select_top_k(confidence, eligible, ctx.k)


@dataclasses.dataclass(frozen=True)
class KnobRule:
  """An adaptive rule: `pick(confidence, eligible, getattr(ctx.knobs, knob))`.
  A subclass names the function and the knob it reads."""

  scheduled: ClassVar[bool] = False
  knob: ClassVar[str]
  pick: ClassVar[Callable[[jax.Array, jax.Array, jax.Array], jax.Array]]

  def select(self, confidence: jax.Array, eligible: jax.Array,
             ctx: StepContext) -> jax.Array:
    return self.pick(confidence, eligible, getattr(ctx.knobs, self.knob))


class Threshold(KnobRule):
  """Fast-dLLM threshold (`select_threshold`, `knobs.threshold`)."""

  knob = 'threshold'
  pick = staticmethod(select_threshold)


class Factor(KnobRule):
  """Fast-dLLM factor (`select_factor`, `knobs.factor`)."""

  knob = 'factor'
  pick = staticmethod(select_factor)


RULES = {'fixed': TopK, 'threshold': Threshold, 'factor': Factor}
