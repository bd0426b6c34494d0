"""The sampler-program interface the `Engine`, the stepper and the batcher run,
and the registry of samplers by their settings' type.

A sampler is served through one object (`SamplerProgram`, usually a subclass
of `RowSampler`) registered for its settings dataclass (`register`): the
engine asks `of(sampling)` and calls it, never which sampler it holds. What
it provides:

  program key and buckets: `sampling.program_part()` (the settings a compiled
    program is built for; the floats leave it and travel one per row) and
    `bucket` (the padded prompt shape); `gen_bucket` rounds a request's
    max_tokens up to a small set of lengths (whole blocks, a power of two of
    them), so a server meets a few programs;
  request checks: `sampling_for` (request knobs over the defaults; a knob
    the sampler lacks is a one-line ValueError) and `check`;
  per-row knob stacking: `stack` (host arrays [B], traced one per row);
  init / step / finish: `row_fns` (one row's first state and one block of
    it, vmapped over rows by `stepper.RowBatch`; `static_blocks`: one program
    per block index) and `finish` (a row's `Completion` from the batch's
    state);
  warmup: `warmup` (the programs a (settings, prompt, batch) request needs).

A new sampler is one class and one `register(SettingsType, TheClass())` call
(tests/test_sampler_program.py serves a toy one over HTTP). The built-in ones
are `full_rows.FullSequenceSampler` (`SamplingConfig`) and
`block_rows.BlockSampler` (`BlockSamplingConfig`), registered when
`dllm_jax.serving.engine` is imported.
"""

from __future__ import annotations

import dataclasses
from typing import Hashable

import numpy as np

from dllm_jax.serving.protocol import SamplerProgram, of, register  # pylint: disable=unused-import


def not_a_setting(name: str, program: SamplerProgram, known) -> str:
  """The one-line refusal of a setting the model's sampler does not have."""
  return (f'{name} is not a setting of {program.name} that serves this model; '
          f'its settings: {", ".join(sorted(known))}.')


def gen_bucket(tokens: int, block: int, room: int | None = None) -> int:
  """The generated length a request for `tokens` tokens runs with: whole
  blocks of `block`, their count rounded up to a power of two (1, 2, 4, 8, ...
  blocks), at most `room` (then the fewest whole blocks that hold `tokens`).
  The answer is cut to `tokens`."""
  need = -(-tokens // block)
  blocks = 1 << (need - 1).bit_length()
  if room is not None and blocks * block > room:
    blocks = max(need, room // block)
  return blocks * block


class RowSampler:
  """Defaults for a `SamplerProgram`: a knobs dataclass stacked field by field
  (`knobs_type`), prompts left-padded to the engine's prompt buckets, every
  request steppable with a traced block index, `run` and `warmup` through
  the stepper. A subclass gives `name`, `request_knobs`,
  `knobs_type`, `sampling_for`, `check`, `row_fns` and `finish`."""

  name = 'a sampler'
  request_knobs: tuple[str, ...] = ()
  knobs_type: type | None = None

  def resolve(self, engine, sampling):
    return sampling

  def block_length(self, sampling) -> int:
    return sampling.block_length

  def bucket(self, engine, sampling, n: int) -> Hashable:
    return engine.prompt_bucket(n, sampling.gen_length)

  def width(self, bucket) -> int:
    return bucket

  def num_blocks(self, sampling, bucket) -> int:
    return sampling.gen_length // sampling.block_length

  def stack(self, samplings):
    """The rows' floats: the `knobs_type` fields of each settings, float32 [B]."""
    names = [f.name for f in dataclasses.fields(self.knobs_type)]
    return self.knobs_type(**{k: np.asarray([getattr(s, k) for s in samplings], np.float32)
                              for k in names})

  def steppable(self, sampling) -> bool:
    return True

  def static_blocks(self, sampling) -> bool:
    """Whether a row's block index must be static under jit (one program per
    block index; `row_fns`' step then gets it as a Python int)."""
    return False

  def run(self, engine, program, bucket, prompts, seeds, samplings):
    from dllm_jax.serving import stepper  # pylint: disable=g-import-not-at-top
    return stepper.run(engine, program, bucket, list(prompts), list(seeds), samplings)

  def warmup(self, engine, sampling, n: int, b: int, stepped: bool = True) -> None:
    """Compiles what an n-token prompt in a batch of b rows needs: stepped
    (the server's batcher) or whole (`run`: `Engine.generate`)."""
    del stepped  # `run` steps too.
    from dllm_jax.serving import stepper  # pylint: disable=g-import-not-at-top
    stepper.warmup(engine, sampling, n, b)
