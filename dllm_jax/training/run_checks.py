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
  if (tokenizer.vocab_size > model_cfg.vocab_size or
      tokenizer.special_ids != model_cfg.ids):
    raise ValueError(f'model preset {run.model.preset!r} does not match the '
                     f'{tokenizer.name} tokenizer (vocab {tokenizer.vocab_size}, '
                     f'mask id {tokenizer.special_ids.mask}); use a byte-vocabulary '
                     'preset (tiny, small), which adapts to any tokenizer.')


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
