"""The sampler's public API: one jitted function per (model, shape settings).

  generate(params, prompt, key, config=..., sampling=SamplingConfig(...))
  infill(params, canvas, key, config=..., sampling=...)   # masks anywhere
  pad_prompts(prompts, pad_id, buckets=PROMPT_BUCKETS)   # left-pad to a bucket

The sampler is composed of: config.py (`SamplingConfig`, its traced `Knobs`),
loop.py (`denoise`: blocks and steps), logits_source.py (model calls, block KV
caches, CFG), proposers.py (candidates and confidences: jax / counter noise),
rules.py (which positions a step commits), schedule.py, remasking.py, kernels/fused.py.

Compilation: shape settings (lengths, steps, cache, rule, noise, remasking,
EOS options, CFG on/off) and the prompt length are static; temperature,
threshold, factor and cfg_scale are traced, so changing them reuses the
compiled sampler. Padding prompts to a few bucket lengths (`pad_prompts` with
`buckets`) bounds the compilations a server sees to one per bucket.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import models
from dllm_jax.models import ModelConfig
from dllm_jax.sampling import logits_source, loop
from dllm_jax.sampling.config import CACHES, Knobs, SamplingConfig
from dllm_jax.sampling.logits_source import CachedModel, LogitsFn
from dllm_jax.sampling.loop import SamplerState, denoise
from dllm_jax.sampling.rules import RULES, select_factor, select_threshold

__all__ = ['CACHES', 'CachedModel', 'Knobs', 'LogitsFn', 'PARALLEL', 'PROMPT_BUCKETS',
           'SamplerState', 'SamplingConfig', 'bucket_length', 'compilations', 'denoise',
           'generate', 'infill', 'infill_sample', 'pad_prompts', 'sample',
           'select_factor', 'select_threshold']
PARALLEL = tuple(RULES)
# Default prompt buckets: powers of two; longer prompts round up to a multiple
# of the largest.
PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_traces = [0]


@functools.partial(jax.jit, static_argnames=('config', 'sampling', 'start'))
def _sample_model(params, canvas, segment_ids, positions, key, knobs: Knobs, *,
                  config: ModelConfig, sampling: SamplingConfig,
                  start: int) -> SamplerState:
  _traces[0] += 1  # Python code runs once per trace, i.e. per compilation.
  logits_fn, cached = logits_source.model_calls(params, config)
  return denoise(logits_fn, canvas, segment_ids, positions, key, sampling=sampling,
                 start=start, eos_id=config.ids.eos, eot_id=config.ids.eot,
                 knobs=knobs, cached=cached)


def compilations() -> int:
  """How many times the model sampler has been traced (compiled) so far in this
  process: one per distinct model config, shape settings and canvas shape."""
  return _traces[0]


def bucket_length(length: int, buckets: Sequence[int] = PROMPT_BUCKETS,
                  max_length: int | None = None) -> int:
  """The smallest bucket >= `length` (past the largest bucket: the next multiple
  of it), capped at `max_length` when `length` itself fits under it."""
  if length < 0:
    raise ValueError(f'prompt length must be >= 0, got {length}.')
  if not buckets or min(buckets) <= 0:
    raise ValueError(f'buckets must be positive lengths, got {tuple(buckets)}.')
  fits = [b for b in sorted(buckets) if b >= length]
  largest = max(buckets)
  out = fits[0] if fits else -(-length // largest) * largest
  if max_length is not None and length <= max_length < out:
    return max_length
  return out


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, *,
                buckets: Sequence[int] | None = None,
                max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads prompts of different lengths: (tokens [B, P], mask [B, P] bool).

  P is the longest prompt's length, or with `buckets` that length rounded up by
  `bucket_length(..., buckets, max_length)` (give `max_length` = the model's
  max_len - gen_length so the bucket still fits). Pass `mask` as `prompt_mask`:
  padding is then invisible to the model (its own segment, and positions count
  real tokens only), so a prompt samples the same tokens in any bucket up to
  floating-point summation order."""
  if not prompts:
    raise ValueError('no prompts given.')
  p = max(len(x) for x in prompts)
  if buckets is not None:
    p = bucket_length(p, buckets, max_length)
  tokens = np.full((len(prompts), p), pad_id, np.int32)
  mask = np.zeros((len(prompts), p), bool)
  for i, x in enumerate(prompts):
    if len(x):
      tokens[i, p - len(x):] = np.asarray(x, np.int32)
      mask[i, p - len(x):] = True
  return tokens, mask


def _layout(canvas_mask: jax.Array | None):
  """segment ids (1 real, 0 padding) and positions counted over real tokens."""
  if canvas_mask is None:
    return None, None
  m = jnp.asarray(canvas_mask, jnp.int32)
  return m, jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0)


def _resolve(sampling: SamplingConfig, config: ModelConfig) -> SamplingConfig:
  if sampling.mask_id is None:
    sampling = dataclasses.replace(sampling, mask_id=config.ids.mask)
  if not 0 <= sampling.mask_id < config.vocab_size:
    raise ValueError(f'mask_id={sampling.mask_id} is outside the vocabulary '
                     f'[0, {config.vocab_size}).')
  return sampling


def check_checkpoint(meta: dict | None) -> None:
  """One-line ValueError for a checkpoint (its `meta`, `workdir.read_meta`) this
  full-sequence sampler must not run: one trained with block diffusion, whose
  attention was block-causal (its sampler is `sampling/block.py`)."""
  train = (meta or {}).get('config', {}).get('train', {})
  if train.get('objective') == 'block_diffusion':
    size = train.get('block', {}).get('block_size')
    raise ValueError(f'the checkpoint was trained with objective block_diffusion '
                     f'(block size {size}); the full-sequence sampler does not apply: '
                     'use the block sampler (sampling/block.py; launch.sample picks it).')


def _run(params, canvas, canvas_mask, key, config, sampling, start) -> SamplerState:
  seg, pos = _layout(canvas_mask)
  return _sample_model(params, canvas, seg, pos, key, Knobs.of(sampling),
                       config=config, sampling=sampling.static_part(), start=start)


def sample(params: models.Params, prompt: jax.Array | np.ndarray, key: jax.Array, *,
           config: ModelConfig, sampling: SamplingConfig,
           prompt_mask: jax.Array | np.ndarray | None = None) -> SamplerState:
  """Like `generate`, returning the `SamplerState` (tokens, commit steps, nfe)."""
  sampling = _resolve(sampling, config)
  prompt = prompt if isinstance(prompt, jax.Array) else np.asarray(prompt, np.int32)
  if prompt.ndim != 2:
    raise ValueError(f'prompt must be [batch, length], got shape {prompt.shape}.')
  sampling.validate(prompt.shape[1], config.max_len)
  try:
    concrete = np.asarray(prompt)
  except jax.errors.TracerArrayConversionError:  # Traced by an outer jit.
    concrete = None
  if concrete is not None and np.any(concrete == sampling.mask_id):
    raise ValueError(f'the prompt contains the mask token (id {sampling.mask_id}); '
                     'use infill() to fill masked positions of a given canvas.')
  b, p = prompt.shape
  canvas = jnp.concatenate(
      [jnp.asarray(prompt, jnp.int32),
       jnp.full((b, sampling.gen_length), sampling.mask_id, jnp.int32)], axis=1)
  canvas_mask = None if prompt_mask is None else jnp.concatenate(
      [jnp.asarray(prompt_mask, bool), jnp.ones((b, sampling.gen_length), bool)], 1)
  return _run(params, canvas, canvas_mask, key, config, sampling, p)


def row_walk(params: models.Params, prompt: jax.Array, mask: jax.Array,
             key: jax.Array, knobs: Knobs, *, config: ModelConfig,
             sampling: SamplingConfig, proposer=None) -> loop.BlockWalk:
  """The `loop.BlockWalk` of one prompt [P] (left-padded, `mask` [P] True on
  its tokens) as a one-row batch: what `sample` runs for it with `prompt_mask`
  (traceable; the server's rows, each with its own key and `knobs`).
  `sampling` has `mask_id` set; its floats are read from `knobs` only."""
  g = sampling.gen_length
  canvas = jnp.concatenate([prompt, jnp.full((g,), sampling.mask_id, jnp.int32)])[None]
  seg, pos = _layout(jnp.concatenate([mask, jnp.ones((g,), bool)])[None])
  logits_fn, cached = logits_source.model_calls(params, config)
  return loop.blocks(logits_fn, canvas, seg, pos, key, sampling=sampling,
                     start=prompt.shape[0], eos_id=config.ids.eos,
                     eot_id=config.ids.eot, knobs=knobs, proposer=proposer,
                     cached=cached)


def generate(params: models.Params, prompt: jax.Array | np.ndarray, key: jax.Array,
             *, config: ModelConfig, sampling: SamplingConfig,
             prompt_mask: jax.Array | np.ndarray | None = None) -> jax.Array:
  """Samples `sampling.gen_length` tokens after each prompt.

  Args:
    params: model parameters.
    prompt: int [B, P]; with prompts of different lengths, left-padded
      (`pad_prompts`) and `prompt_mask` [B, P] True on real tokens.
    key: PRNG key (Gumbel noise, random remasking).
    config: the model config.
    sampling: the sampler knobs.

  Returns:
    int [B, P + gen_length]: prompt and completion.
  """
  return sample(params, prompt, key, config=config, sampling=sampling,
                prompt_mask=prompt_mask).tokens


def infill_sample(params: models.Params, canvas: jax.Array | np.ndarray,
                  key: jax.Array, *, config: ModelConfig, sampling: SamplingConfig,
                  canvas_mask: jax.Array | np.ndarray | None = None) -> SamplerState:
  """Like `infill`, returning the `SamplerState` (tokens, commit steps, nfe)."""
  canvas = jnp.asarray(canvas, jnp.int32)
  if canvas.ndim != 2:
    raise ValueError(f'canvas must be [batch, length], got shape {canvas.shape}.')
  sampling = _resolve(dataclasses.replace(sampling, gen_length=canvas.shape[1]), config)
  sampling.validate(0, config.max_len)
  return _run(params, canvas, canvas_mask, key, config, sampling, 0)


def infill(params: models.Params, canvas: jax.Array | np.ndarray, key: jax.Array, *,
           config: ModelConfig, sampling: SamplingConfig,
           canvas_mask: jax.Array | np.ndarray | None = None) -> jax.Array:
  """Fills every mask token of `canvas` [B, T]; all other tokens stay fixed.

  Templates and fill-in-the-middle: blocks of `sampling.block_length` cover the
  whole canvas (`gen_length` is taken to be T), `sampling.steps` split over them;
  each step commits tokens in proportion to the masks of the current block.
  """
  return infill_sample(params, canvas, key, config=config, sampling=sampling,
                       canvas_mask=canvas_mask).tokens
