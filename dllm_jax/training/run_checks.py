"""Checks across a run's config sections, the model and the mesh (each section
checks its own fields when it is built: training/sections.py)."""

from __future__ import annotations

import math
from typing import Mapping

import jax

from dllm_jax import models
from dllm_jax.training.sections import RunConfig


def check_run(run: RunConfig, model_cfg, tokenizer) -> None:
  """One-line ValueErrors for settings that cannot work together."""
  t = run.train
  if run.data.source == 'stdlib' and run.objective.data == 'chat':
    raise ValueError(f'train.objective={t.objective!r} needs chat examples (prompt/'
                     'response records); the built-in corpus is pretraining text. '
                     'See launch/configs/sft.py.')
  if t.batch_size % jax.process_count():
    raise ValueError(f'train.batch_size={t.batch_size} is not divisible by the '
                     f'{jax.process_count()} processes.')
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f'train.batch_size={t.batch_size} is not divisible by '
                     f'train.grad_accum_steps={t.grad_accum_steps}.')
  if run.data.seq_len > model_cfg.max_len:
    raise ValueError(f'data.seq_len={run.data.seq_len} exceeds the model max_len '
                     f'{model_cfg.max_len}.')
  if t.objective == 'block_diffusion':
    t.block.options().validate(run.data.seq_len)
    if model_cfg.causal:
      raise ValueError('train.objective=block_diffusion needs a bidirectional model.')
  check_sample(run, model_cfg, tokenizer)
  if (tokenizer.vocab_size > model_cfg.vocab_size or
      tokenizer.special_ids != model_cfg.ids):
    raise ValueError(f'model preset {run.model.preset!r} does not match the '
                     f'{tokenizer.name} tokenizer (vocab {tokenizer.vocab_size}, '
                     f'mask id {tokenizer.special_ids.mask}); use a byte-vocabulary '
                     'preset (tiny, small), which adapts to any tokenizer.')


def sample_config(run: RunConfig):
  """The sampling settings of the sample printed after training: the block
  sampler's for a block_diffusion run (its block size, one step per token),
  None for a next-token run (greedy decoding), else the full-sequence
  sampler's."""
  s, t = run.sample, run.train
  if t.objective == 'block_diffusion':
    from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
    b = t.block.block_size
    return block.BlockSamplingConfig(gen_length=s.gen_length, block_length=b, steps=b,
                                     temperature=s.temperature)
  if run.objective.causal_model:
    return None
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  return gen.SamplingConfig(steps=s.steps, gen_length=s.gen_length,
                            block_length=s.block_length, temperature=s.temperature)


def check_steps(sampling) -> None:
  """A ValueError for more denoising steps than positions to fill (each step
  commits at least one; the extra steps would only take time): the full
  sampler's `steps` over `gen_length`, the block sampler's per block over
  `block_length`."""
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  per_block = not isinstance(sampling, gen.SamplingConfig)
  most = sampling.block_length if per_block else sampling.gen_length
  if sampling.parallel == 'fixed' and sampling.steps > most:
    raise ValueError(f'steps={sampling.steps} exceeds the {most} positions '
                     f'{"a block has" if per_block else "to fill (gen_length)"}: '
                     'each step commits at least one.')


def sample_prompt_ids(run: RunConfig, tokenizer):
  """The end-of-run sample's prompt as the model sees it."""
  from dllm_jax.data import sft as sft_lib  # pylint: disable=g-import-not-at-top
  if run.objective.data == 'chat':
    return sft_lib.prompt_ids(tokenizer, [{'role': 'user', 'content': run.sample.prompt}])
  return tokenizer.encode(run.sample.prompt, add_bos=True)


def check_sample(run: RunConfig, model_cfg, tokenizer) -> None:
  """One-line ValueErrors, before training, for sample.* settings the sample
  printed after training cannot use (sample.num_samples=0: none printed)."""
  if run.sample.num_samples == 0:
    return
  sampling = sample_config(run)
  prompt = len(sample_prompt_ids(run, tokenizer))
  hint = ' (or set sample.num_samples=0: no sample after training)'
  try:
    if sampling is not None:
      sampling.validate()
      check_steps(sampling)
    b = getattr(sampling, 'block_length', 1) if run.train.objective == \
        'block_diffusion' else 1
    need = -(-(prompt + run.sample.gen_length) // b) * b
    if need > model_cfg.max_len:
      raise ValueError(f'the prompt ({prompt} tokens) and gen_length '
                       f'{run.sample.gen_length} need {need} positions, more than the '
                       f'model max_len {model_cfg.max_len}')
  except ValueError as e:
    raise ValueError(f'sample settings: {str(e).rstrip(".")}{hint}.') from None


def check_mesh(run: RunConfig, model_cfg, mesh_shape: Mapping[str, int]) -> None:
  """One-line ValueErrors for a batch or model that does not fit the mesh."""
  t = run.train
  axes = [a for a in ('data', 'fsdp', 'expert') if a in mesh_shape]
  dp = math.prod(mesh_shape[a] for a in axes)
  micro = t.batch_size // t.grad_accum_steps
  if micro % dp:
    raise ValueError(
        f'train.batch_size={t.batch_size} (microbatches of {micro} with '
        f'grad_accum_steps={t.grad_accum_steps}) is not divisible by the data-parallel '
        f'size {" x ".join("mesh." + a for a in axes)} = '
        f'{" x ".join(str(mesh_shape[a]) for a in axes)} = {dp}.')
  models.of(model_cfg).check_mesh(model_cfg, dict(mesh_shape))
