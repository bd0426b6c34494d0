"""The sampler-program protocol and the registry of samplers by their
settings' type (`serving/sampler.py` explains the interface; its `RowSampler`
is the usual base class). Apart from it so the stepper, which looks programs
up here, and `RowSampler`, which runs the stepper, import one way."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Protocol, Sequence, runtime_checkable

import numpy as np

from dllm_jax.serving.records import Completion


@runtime_checkable
class SamplerProgram(Protocol):
  """What serving calls on a sampler (serving/sampler.py's docstring says what each part is)."""

  name: str  # In messages: 'the full-sequence sampler'.
  request_knobs: tuple[str, ...]  # Settings a request may set (besides the lengths).

  def sampling_for(self, engine, default, gen_length: int, block_length: int | None,
                   steps: int | None, knobs: dict, asked: int | None = None) -> Any: ...
  def resolve(self, engine, sampling) -> Any: ...
  def block_length(self, sampling) -> int: ...
  def check(self, engine, sampling, n: int) -> None: ...
  def bucket(self, engine, sampling, n: int) -> Hashable: ...
  def width(self, bucket) -> int: ...
  def num_blocks(self, sampling, bucket) -> int: ...
  def stack(self, samplings: Sequence[Any]) -> Any: ...
  def steppable(self, sampling) -> bool: ...
  def static_blocks(self, sampling) -> bool: ...
  def row_fns(self, engine, program, bucket) -> tuple[Callable, Callable]: ...
  def finish(self, engine, program, bucket, carry, i: int, tokens: np.ndarray,
             prompt_tokens: int) -> Completion: ...
  def run(self, engine, program, bucket, prompts: Sequence[np.ndarray],
          seeds: Sequence[int], samplings: Sequence[Any]) -> list[Completion]: ...
  def warmup(self, engine, sampling, n: int, b: int, stepped: bool = True) -> None: ...


_REGISTRY: dict[type, SamplerProgram] = {}


def register(settings: type, program: SamplerProgram) -> SamplerProgram:
  """Serves requests whose settings are a `settings` instance with `program`."""
  if not isinstance(program, SamplerProgram):
    raise TypeError(f'{program!r} does not implement SamplerProgram.')
  _REGISTRY[settings] = program
  return program


def of(sampling) -> SamplerProgram:
  """The registered program of these settings (TypeError if none)."""
  for cls in type(sampling).__mro__:
    if cls in _REGISTRY:
      return _REGISTRY[cls]
  raise TypeError(f'no sampler is registered for settings of type '
                  f'{type(sampling).__name__} (serving.sampler.register).')
