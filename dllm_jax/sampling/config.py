"""The sampler's settings: `SamplingConfig` (every knob, as users give them) and
its split into static shape settings (a jit static argument) and `Knobs`, the
traced floats, so that a new temperature, threshold, factor or CFG scale does
not recompile the sampler."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.sampling import proposers, remasking, rules

CACHES = ('none', 'prefix', 'dual')


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Every knob of the LLaDA reference `generate` (hashable). Under jit only the
  shape settings are static (`static_part`); the floats travel as `Knobs`."""

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
  # on GPU, its jnp twin elsewhere; see kernels/fused.py).
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
    _check_choice('parallel decoding', self.parallel, rules.RULES)
    _check_choice('noise', self.noise, proposers.PROPOSERS)
    _check_choice('cache', self.cache, CACHES)
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f'threshold must be in (0, 1], got {self.threshold}.')
    if self.factor <= 0:
      raise ValueError(f'factor must be positive, got {self.factor}.')
    if self.cache_refresh < 0:
      raise ValueError(f'cache_refresh must be >= 0, got {self.cache_refresh}.')
    _check_choice('remasking', self.remasking, remasking.REMASKING)
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {self.temperature}.')
    if self.cfg_scale < 0:
      raise ValueError(f'cfg_scale must be >= 0, got {self.cfg_scale}.')
    if max_len is not None and prompt_length + self.gen_length > max_len:
      raise ValueError(
          f'prompt length {prompt_length} + gen_length {self.gen_length} = '
          f'{prompt_length + self.gen_length} exceeds the model max_len {max_len}.')

  @property
  def use_cfg(self) -> bool:
    """Classifier-free guidance doubles the batch: a shape setting."""
    return self.cfg_scale > 0

  def static_part(self) -> 'SamplingConfig':
    """This config with every traced float at one fixed value (CFG kept on or
    off as 1.0 / 0.0): equal for configs that differ only in `Knobs`, so it is
    the jit static argument. Read the floats from `Knobs`, never from it."""
    default = SamplingConfig()
    return dataclasses.replace(
        self, temperature=default.temperature, threshold=default.threshold,
        factor=default.factor, cfg_scale=1.0 if self.use_cfg else 0.0)

  def program_part(self) -> 'SamplingConfig':
    """`static_part` that also keeps whether noise is drawn (temperature 1.0 /
    0.0): what a server program is built for, its rows' floats traced one per
    row (`Knobs.stack`; a per-row temperature under `vmap` would run both
    branches of the proposer's `lax.cond`: see `proposers.build`)."""
    return dataclasses.replace(self.static_part(), temperature=float(self.temperature > 0))


def _check_choice(what: str, value: str, known) -> None:
  if value not in known:
    raise ValueError(f'unknown {what} {value!r}; known: {", ".join(known)}.')


@flax.struct.dataclass
class Knobs:
  """The float settings, traced (float32 [] each; [B] from `stack`, one per row
  under `vmap`): changing them reuses the compiled sampler. `temperature` 0 and
  > 0 take different `lax.cond` branches unless the proposer fixes the branch
  (`proposers.build(noised=)`, the server's rows)."""

  temperature: jax.Array
  threshold: jax.Array
  factor: jax.Array
  # cfg_scale + 1, the weight of the conditional logits: computed in Python
  # (float64) and rounded once, as the constant was before it was traced.
  cfg_weight: jax.Array

  @classmethod
  def of(cls, sampling: SamplingConfig) -> 'Knobs':
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return cls(temperature=f32(sampling.temperature), threshold=f32(sampling.threshold),
               factor=f32(sampling.factor), cfg_weight=f32(sampling.cfg_scale + 1.0))

  @classmethod
  def stack(cls, samplings: Sequence[SamplingConfig]) -> 'Knobs':
    """One row each: host float32 arrays [len(samplings)], rounded as `of`."""
    f32 = lambda f: np.asarray([f(s) for s in samplings], np.float32)
    return cls(temperature=f32(lambda s: s.temperature), threshold=f32(lambda s: s.threshold),
               factor=f32(lambda s: s.factor), cfg_weight=f32(lambda s: s.cfg_scale + 1.0))
