"""The LLaDA denoising sampler: one jitted function, nested `lax.scan`s.

canvas = [prompt | MASK * gen_length], split into gen_length / block_length
blocks, steps split evenly over blocks. Each step: logits (optionally with
classifier-free guidance) -> candidates and confidences -> commit the most
confident masked positions of the current block -> next step.

  generate(params, prompt, key, config=..., sampling=SamplingConfig(...))
  infill(params, canvas, key, config=..., sampling=...)   # masks anywhere
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import model as model_lib
from dllm_jax.presets import ModelConfig
from dllm_jax.sampling import remasking
from dllm_jax.sampling.schedule import tokens_per_step

# (tokens [B, T], segment_ids [B, T] | None, positions [B, T] | None,
#  output_window=(start, length)) -> logits [B, length, V] of positions
#  [start, start + length) (every position of the canvas is attended).
LogitsFn = Callable[..., jax.Array]
# (confidence [B, T], eligible [B, T], k [B]) -> commit [B, T] bool
SelectFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
PARALLEL = ('fixed', 'threshold', 'factor')
CACHES = ('none', 'prefix', 'dual')


@dataclasses.dataclass(frozen=True)
class CachedModel:
  """The two model calls block KV caching needs (see `model.forward_with_cache`
  and `model.forward_window`):

    full(tokens [B, T], seg, pos, output_window) -> (logits, cache)
    window(tokens [B, W], start, cache, seg, pos, output_length) -> (logits, cache)
  """
  full: Callable[..., tuple[jax.Array, object]]
  window: Callable[..., tuple[jax.Array, object]]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Every knob of the LLaDA reference `generate` (hashable: static under jit)."""

  steps: int = 128
  gen_length: int = 128
  block_length: int = 128
  temperature: float = 0.0
  cfg_scale: float = 0.0
  remasking: str = 'low_confidence'
  logits_eos_inf: bool = False
  confidence_eos_eot_inf: bool = False
  mask_id: int | None = None  # None: the model config's mask id.
  # Parallel decoding (Fast-dLLM): 'fixed' commits the LLaDA schedule's k tokens
  # per step (`steps`); 'threshold' every masked position with confidence >=
  # `threshold` (at least one); 'factor' the largest n whose n-th confidence is
  # >= 1 - factor / (n + 1). The adaptive rules end a block as soon as it has no
  # masks (`steps` is then unused); `SamplerState.nfe` counts the steps taken.
  parallel: str = 'fixed'
  threshold: float = 0.9
  factor: float = 1.0
  # Block KV cache: 'none' recomputes the canvas every step; 'prefix' reuses
  # the keys/values before the current block (recomputing the block and what
  # follows); 'dual' also reuses those after it, computing the block alone.
  # The cache is refreshed by a full forward at every block start and, with
  # `cache_refresh` = n > 0, every n steps within a block.
  cache: str = 'none'
  cache_refresh: int = 0
  # Randomness and the hot path: 'jax' (jax.random, replayable by the NumPy
  # reference) or 'counter' (hashed per step/row/column; the fused Pallas kernel
  # on GPU, its jnp twin elsewhere; see sampling/fused.py).
  noise: str = 'jax'

  def validate(self, prompt_length: int = 0, max_len: int | None = None) -> None:
    """Raises ValueError with a one-line message on a bad combination."""
    for name in ('steps', 'gen_length', 'block_length'):
      if getattr(self, name) <= 0:
        raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
    if self.gen_length % self.block_length:
      raise ValueError(f'gen_length={self.gen_length} is not divisible by '
                       f'block_length={self.block_length}.')
    num_blocks = self.gen_length // self.block_length
    if self.steps % num_blocks:
      raise ValueError(f'steps={self.steps} is not divisible by the number of '
                       f'blocks gen_length/block_length={num_blocks}.')
    if self.parallel not in PARALLEL:
      raise ValueError(f'unknown parallel decoding {self.parallel!r}; known: '
                       f'{", ".join(PARALLEL)}.')
    if self.noise not in remasking.NOISES:
      raise ValueError(f'unknown noise {self.noise!r}; known: '
                       f'{", ".join(remasking.NOISES)}.')
    if self.cache not in CACHES:
      raise ValueError(f'unknown cache {self.cache!r}; known: {", ".join(CACHES)}.')
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f'threshold must be in (0, 1], got {self.threshold}.')
    if self.factor <= 0:
      raise ValueError(f'factor must be positive, got {self.factor}.')
    if self.cache_refresh < 0:
      raise ValueError(f'cache_refresh must be >= 0, got {self.cache_refresh}.')
    if self.remasking not in remasking.REMASKING:
      raise ValueError(f'unknown remasking {self.remasking!r}; known: '
                       f'{", ".join(remasking.REMASKING)}.')
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {self.temperature}.')
    if self.cfg_scale < 0:
      raise ValueError(f'cfg_scale must be >= 0, got {self.cfg_scale}.')
    if max_len is not None and prompt_length + self.gen_length > max_len:
      raise ValueError(
          f'prompt length {prompt_length} + gen_length {self.gen_length} = '
          f'{prompt_length + self.gen_length} exceeds the model max_len {max_len}.')


@flax.struct.dataclass
class SamplerState:
  """The loop carry: the canvas and, per position, the step that committed it."""

  tokens: jax.Array  # [B, T] int32.
  commit_step: jax.Array  # [B, T] int32; -1 where the position was never masked.
  nfe: jax.Array  # [] int32: denoising steps taken (model evaluations).


def select_threshold(confidence: jax.Array, eligible: jax.Array,
                     threshold: float) -> jax.Array:
  """Fast-dLLM's threshold rule: every eligible position with confidence >=
  `threshold`, and always the most confident one. [B, T] -> bool [B, T]."""
  top = (remasking.rank_by_confidence(confidence, eligible) == 0) & eligible
  return eligible & ((confidence >= threshold) | top)


def select_factor(confidence: jax.Array, eligible: jax.Array,
                  factor: float) -> jax.Array:
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


def denoise(logits_fn: LogitsFn, canvas: jax.Array, segment_ids: jax.Array | None,
            positions: jax.Array | None, key: jax.Array, *, sampling: SamplingConfig,
            start: int, eos_id: int, eot_id: int,
            select_fn: SelectFn = remasking.select_top_k,
            cached: CachedModel | None = None) -> SamplerState:
  """The sampling loop (pure, traceable; callers jit it).

  Only the current block's positions can be committed (earlier blocks are fully
  committed by construction, later ones are excluded as in the reference), so
  logits, candidates and confidences are computed for the block alone: the model
  attends over the whole canvas but runs its output head on `block_length` rows.
  Steps within a block are a `lax.scan` ('fixed') or a `lax.while_loop` that ends
  when the block has no masks (adaptive rules); blocks are a `lax.scan` (Python
  loop with the prefix cache, whose window shrinks block by block).

  Args:
    logits_fn: the mask predictor (see `LogitsFn`).
    canvas: int [B, T]; positions equal to `sampling.mask_id` are generated.
    segment_ids, positions: passed to `logits_fn` (left padding), or None.
    key: PRNG key; the i-th step overall uses `fold_in(key, i)`.
    sampling: the knobs; `mask_id` must be set.
    start: first position of the first block; blocks cover [start, T).
    eos_id, eot_id: for the EOS options.
    select_fn: which positions to commit given confidences ('fixed' rule).
    cached: the model's cached calls; needed when `sampling.cache` != 'none'.

  Returns:
    the final `SamplerState`.
  """
  sc = sampling
  mask_id = sc.mask_id
  b, t = canvas.shape
  bl = sc.block_length
  num_blocks = (t - start) // bl
  steps_per_block = sc.steps // num_blocks
  prompt_index = canvas != mask_id
  use_cfg = sc.cfg_scale > 0
  if sc.cache != 'none' and cached is None:
    raise ValueError(f'cache={sc.cache!r} needs the model\'s cached calls.')

  def dup(a):
    return None if a is None else jnp.concatenate([a, a])

  def model_input(x):  # With CFG: the batch and its prompt-masked copy.
    return jnp.concatenate([x, jnp.where(prompt_index, mask_id, x)]) if use_cfg else x

  def guide(logits):
    if not use_cfg:
      return logits
    logits = logits.astype(jnp.float32)
    cond, un = logits[:b], logits[b:]
    return un + (sc.cfg_scale + 1.0) * (cond - un)

  seg2, pos2 = (dup(segment_ids), dup(positions)) if use_cfg else (segment_ids,
                                                                    positions)

  def full_logits(x, block_start):
    """Recomputes the canvas: (block logits, fresh cache or None)."""
    window = (block_start, bl)
    if cached is None:
      return guide(logits_fn(model_input(x), seg2, pos2, output_window=window)), None
    logits, cache = cached.full(model_input(x), seg2, pos2, output_window=window)
    return guide(logits), cache

  def window_logits(x, block_start, cache):
    """Recomputes the block (dual) or the block and after (prefix) only."""
    width = bl if sc.cache == 'dual' else t - block_start
    xw = jax.lax.dynamic_slice_in_dim(model_input(x), block_start, width, axis=1)
    logits, cache = cached.window(xw, block_start, cache, seg2, pos2,
                                  output_length=bl)
    return guide(logits), cache

  def step(state: SamplerState, cache, block_start, num_masked, i):
    """One denoising step on the block at `block_start` (its i-th step)."""
    window = lambda a: jax.lax.dynamic_slice_in_dim(a, block_start, bl, axis=1)
    if sc.cache == 'none':
      logits, _ = full_logits(state.tokens, block_start)
    else:
      refresh = i == 0
      if sc.cache_refresh > 0:
        refresh = refresh | (i % sc.cache_refresh == 0)
      logits, cache = jax.lax.cond(
          refresh, lambda: full_logits(state.tokens, block_start),
          lambda: window_logits(state.tokens, block_start, cache))
    x = window(state.tokens)
    candidates, confidence = remasking.candidates_and_confidence(
        logits, jax.random.fold_in(key, state.nfe), temperature=sc.temperature,
        remasking=sc.remasking, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
        logits_eos_inf=sc.logits_eos_inf,
        confidence_eos_eot_inf=sc.confidence_eos_eot_inf, noise=sc.noise)
    eligible = x == mask_id
    if sc.parallel == 'threshold':
      commit = select_threshold(confidence, eligible, sc.threshold)
    elif sc.parallel == 'factor':
      commit = select_factor(confidence, eligible, sc.factor)
    else:
      commit = select_fn(confidence, eligible,
                         tokens_per_step(num_masked, steps_per_block, i))
    put = lambda full, blk: jax.lax.dynamic_update_slice_in_dim(
        full, blk, block_start, axis=1)
    return SamplerState(
        tokens=put(state.tokens, jnp.where(commit, candidates, x)),
        commit_step=put(state.commit_step,
                        jnp.where(commit, state.nfe, window(state.commit_step))),
        nfe=state.nfe + 1), cache

  # The cache's carry before a block's first step (which always refreshes it).
  empty_cache = None
  if sc.cache != 'none':
    shapes = jax.eval_shape(lambda x: cached.full(x, seg2, pos2, output_window=(0, bl)),
                            model_input(canvas))[1]
    empty_cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def run_block(state: SamplerState, block_start):
    masked = lambda st: jax.lax.dynamic_slice_in_dim(st.tokens, block_start, bl,
                                                     axis=1) == mask_id
    num_masked = jnp.sum(masked(state), axis=1)
    cache = empty_cache
    if sc.parallel == 'fixed':
      def body(carry, i):
        st, c = carry
        return step(st, c, block_start, num_masked, i), None
      (state, _), _ = jax.lax.scan(body, (state, cache), jnp.arange(steps_per_block))
      return state

    def cond(carry):
      st, _, i = carry
      return jnp.any(masked(st)) & (i < bl)  # Each step commits >= 1 per row.

    def body(carry):
      st, c, i = carry
      st, c = step(st, c, block_start, num_masked, i)
      return st, c, i + 1
    state, _, _ = jax.lax.while_loop(cond, body, (state, cache, jnp.int32(0)))
    return state

  state = SamplerState(tokens=canvas.astype(jnp.int32),
                       commit_step=jnp.full((b, t), -1, jnp.int32),
                       nfe=jnp.zeros((), jnp.int32))
  if sc.cache == 'prefix':  # Static window widths: one traced copy per block.
    for block in range(num_blocks):
      state = run_block(state, start + block * bl)
    return state
  state, _ = jax.lax.scan(lambda st, blk: (run_block(st, start + blk * bl), None),
                          state, jnp.arange(num_blocks))
  return state


@functools.partial(jax.jit, static_argnames=('config', 'sampling', 'start'))
def _sample_model(params, canvas, segment_ids, positions, key, *, config: ModelConfig,
                  sampling: SamplingConfig, start: int) -> SamplerState:
  logits_fn = functools.partial(model_lib.forward, params, config=config)
  cached = CachedModel(
      full=functools.partial(model_lib.forward_with_cache, params, config=config),
      window=functools.partial(model_lib.forward_window, params, config=config))
  return denoise(logits_fn, canvas, segment_ids, positions, key, sampling=sampling,
                 start=start, eos_id=config.ids.eos, eot_id=config.ids.eot,
                 cached=cached)


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads prompts of different lengths: (tokens [B, P], mask [B, P] bool)."""
  if not prompts:
    raise ValueError('no prompts given.')
  p = max(len(x) for x in prompts)
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


def sample(params: model_lib.Params, prompt: jax.Array | np.ndarray, key: jax.Array, *,
           config: ModelConfig, sampling: SamplingConfig,
           prompt_mask: jax.Array | np.ndarray | None = None) -> SamplerState:
  """Like `generate`, returning the `SamplerState` (tokens and commit steps)."""
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
  seg, pos = _layout(canvas_mask)
  return _sample_model(params, canvas, seg, pos, key, config=config,
                       sampling=sampling, start=p)


def generate(params: model_lib.Params, prompt: jax.Array | np.ndarray, key: jax.Array,
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


def infill_sample(params: model_lib.Params, canvas: jax.Array | np.ndarray,
                  key: jax.Array, *, config: ModelConfig, sampling: SamplingConfig,
                  canvas_mask: jax.Array | np.ndarray | None = None) -> SamplerState:
  """Like `infill`, returning the `SamplerState` (tokens, commit steps, nfe)."""
  canvas = jnp.asarray(canvas, jnp.int32)
  if canvas.ndim != 2:
    raise ValueError(f'canvas must be [batch, length], got shape {canvas.shape}.')
  sampling = _resolve(dataclasses.replace(sampling, gen_length=canvas.shape[1]), config)
  sampling.validate(0, config.max_len)
  seg, pos = _layout(canvas_mask)
  return _sample_model(params, canvas, seg, pos, key, config=config,
                       sampling=sampling, start=0)


def infill(params: model_lib.Params, canvas: jax.Array | np.ndarray, key: jax.Array, *,
           config: ModelConfig, sampling: SamplingConfig,
           canvas_mask: jax.Array | np.ndarray | None = None) -> jax.Array:
  """Fills every mask token of `canvas` [B, T]; all other tokens stay fixed.

  Templates and fill-in-the-middle: blocks of `sampling.block_length` cover the
  whole canvas (`gen_length` is taken to be T), `sampling.steps` split over them;
  each step commits tokens in proportion to the masks of the current block.
  """
  return infill_sample(params, canvas, key, config=config, sampling=sampling,
                       canvas_mask=canvas_mask).tokens
