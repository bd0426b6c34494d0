"""The logits source: a step's block logits for the current canvas.

Every call the sampler makes into the model is in `model_calls`. Around them a
source object is built once per run, layer by layer: how the canvas is
recomputed (`Recompute`: all of it each step; `BlockCache`: a prefix / dual
block KV cache refreshed by a full forward at block starts), and optionally
classifier-free guidance (`Guided`) on top. The loop sees two methods:

  init(canvas [B, T]) -> carry                   # the cache (or ()) before a block
  block_logits(tokens [B, T], block_start, i, carry) -> (logits [B, bl, V], carry)

where `i` is the step's number within its block (cache refreshes).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dllm_jax import models
from dllm_jax.models import ModelConfig
from dllm_jax.models import attention

# (tokens [B, T], segment_ids [B, T] | None, positions [B, T] | None,
#  output_window=(start, length)) -> logits [B, length, V] of positions
#  [start, start + length) (every position of the canvas is attended).
LogitsFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class CachedModel:
  """The two model calls block KV caching needs (see `model.forward_with_cache`
  and `model.forward_window`):

    full(tokens [B, T], seg, pos, output_window) -> (logits, cache)
    window(tokens [B, W], start, cache, seg, pos, output_length) -> (logits, cache)
  """
  full: Callable[..., tuple[jax.Array, object]]
  window: Callable[..., tuple[jax.Array, object]]


def model_calls(params: models.Params,
                config: ModelConfig) -> tuple[LogitsFn, CachedModel]:
  """The model's mask predictor as the sampler calls it: (`LogitsFn`,
  `CachedModel`). The only place that knows the model's signatures. The
  sampler's attention rule: bidirectional over the canvas, within segments
  (left padding is its own segment)."""
  spec = lambda seg: attention.bidirectional(segment_ids=seg)

  def logits_fn(tokens, segment_ids, positions, output_window):
    return models.forward(params, tokens, positions=positions, config=config,
                          output_window=output_window,
                          attention=spec(segment_ids))

  def full(tokens, segment_ids, positions, output_window):
    return models.forward_with_cache(params, tokens, positions=positions,
                                     config=config, output_window=output_window,
                                     attention=spec(segment_ids))

  def window(tokens, start, cache, segment_ids, positions, output_length):
    return models.forward_window(params, tokens, start, cache,
                                 positions=positions, config=config,
                                 output_length=output_length,
                                 attention=spec(segment_ids))
  return logits_fn, CachedModel(full=full, window=window)


@dataclasses.dataclass(frozen=True)
class Recompute:
  """No cache: every step runs the model on the whole canvas."""

  logits_fn: LogitsFn
  segment_ids: jax.Array | None
  positions: jax.Array | None
  block_length: int

  def init(self, canvas: jax.Array):
    return ()

  def block_logits(self, tokens, block_start, i, carry):
    window = (block_start, self.block_length)
    return self.logits_fn(tokens, self.segment_ids, self.positions,
                          output_window=window), carry


@dataclasses.dataclass(frozen=True)
class BlockCache:
  """Approximate block KV cache: a full forward refreshes it at a block's first
  step and, with `refresh` = n > 0, every n steps; other steps recompute the
  block alone (`dual`) or the block and everything after it (prefix)."""

  cached: CachedModel
  segment_ids: jax.Array | None
  positions: jax.Array | None
  block_length: int
  dual: bool
  refresh: int = 0

  def init(self, canvas: jax.Array):
    """Zeros shaped like the cache (every block's first step overwrites it)."""
    shapes = jax.eval_shape(
        lambda x: self.cached.full(x, self.segment_ids, self.positions,
                                   output_window=(0, self.block_length)), canvas)[1]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def _full(self, tokens, block_start):
    return self.cached.full(tokens, self.segment_ids, self.positions,
                            output_window=(block_start, self.block_length))

  def _window(self, tokens, block_start, cache):
    # The prefix window reaches the canvas end: static only with a static
    # block_start (the loop unrolls blocks for it).
    width = self.block_length if self.dual else tokens.shape[1] - block_start
    window = jax.lax.dynamic_slice_in_dim(tokens, block_start, width, axis=1)
    return self.cached.window(window, block_start, cache, self.segment_ids,
                              self.positions, output_length=self.block_length)

  def block_logits(self, tokens, block_start, i, cache):
    refresh = i == 0
    if self.refresh > 0:
      refresh = refresh | (i % self.refresh == 0)
    return jax.lax.cond(refresh, lambda: self._full(tokens, block_start),
                        lambda: self._window(tokens, block_start, cache))


@dataclasses.dataclass(frozen=True)
class Guided:
  """Classifier-free guidance around an inner source built for the doubled
  batch: the canvas and its copy with every prompt position masked;
  logits = un + cfg_weight * (cond - un), cfg_weight = cfg_scale + 1 (traced)."""

  inner: object
  prompt_index: jax.Array  # [B, T] bool: positions never generated.
  mask_id: int
  cfg_weight: jax.Array

  def _both(self, tokens):
    return jnp.concatenate([tokens, jnp.where(self.prompt_index, self.mask_id, tokens)])

  def init(self, canvas: jax.Array):
    return self.inner.init(self._both(canvas))

  def block_logits(self, tokens, block_start, i, carry):
    logits, carry = self.inner.block_logits(self._both(tokens), block_start, i, carry)
    logits = logits.astype(jnp.float32)
    cond, un = jnp.split(logits, 2)
    return un + self.cfg_weight * (cond - un), carry


def build(canvas: jax.Array, segment_ids: jax.Array | None,
          positions: jax.Array | None, *, sampling, knobs,
          logits_fn: LogitsFn | None, cached: CachedModel | None):
  """The source for one run: `sampling.cache` picks the recompute layer,
  `sampling.use_cfg` adds guidance (`knobs.cfg_weight`)."""
  dup = lambda a: a if a is None or not sampling.use_cfg else jnp.concatenate([a, a])
  seg, pos = dup(segment_ids), dup(positions)
  if sampling.cache == 'none':
    source = Recompute(logits_fn, seg, pos, sampling.block_length)
  elif cached is None:
    raise ValueError(f"cache={sampling.cache!r} needs the model's cached calls.")
  else:
    source = BlockCache(cached, seg, pos, sampling.block_length,
                        dual=sampling.cache == 'dual', refresh=sampling.cache_refresh)
  if sampling.use_cfg:
    source = Guided(source, canvas != sampling.mask_id, sampling.mask_id,
                    knobs.cfg_weight)
  return source
