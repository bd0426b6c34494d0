"""What a checkpoint records about the run that wrote it, and resume checks.

Resuming with a config that changes the model's shape or the tokenizer is
refused (the parameters would not fit, or would mean something else), and so is
one that changes the data order: the config fields each section declares
`fixed` (training/sections.py), and the model config's fields other than its
family's `compute_fields`. Other changes (steps, logging, learning rate, compute
dtype) are allowed and listed.
"""

from __future__ import annotations

from typing import Any

import jax

from dllm_jax import models
from dllm_jax import tokenizers as tokenizer_lib
from dllm_jax.training.sections import RunConfig
from dllm_jax.version import __version__


def run_record(config: dict, model_cfg, tokenizer) -> dict[str, Any]:
  """The provenance stored with every checkpoint (JSON-serialisable)."""
  devices = jax.devices()
  return {'config': config, 'model_config': models.config_to_dict(model_cfg),
          'tokenizer': tokenizer.to_dict(),
          'dllm_jax_version': __version__, 'jax_version': jax.__version__,
          'mesh': {'process_count': jax.process_count(),
                   'device_count': jax.device_count(),
                   'device_kind': devices[0].device_kind,
                   'platform': devices[0].platform}}


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(key, old value, new value) for every differing flattened key."""
  a, b = flatten(old), flatten(new)
  return [(k, a.get(k, '<absent>'), b.get(k, '<absent>'))
          for k in sorted(set(a) | set(b)) if a.get(k, '<absent>') != b.get(k, '<absent>')]


def _normalised(model_config: dict) -> dict:
  """A stored model config in today's form (older checkpoints: no family, flat
  special ids), or as stored when it no longer builds (the diff then shows why)."""
  try:
    return models.config_to_dict(models.config_from_dict(model_config))
  except (TypeError, ValueError):
    return model_config


def check_resume(saved: dict, current: dict) -> list[str]:
  """Raises ValueError listing incompatible changes; returns the harmless ones.

  `saved` and `current` are `run_record`s.
  """
  diffs = tokenizer_lib.vocab_differences(saved.get('tokenizer', {}),
                                          current['tokenizer'])
  if diffs:
    raise ValueError(f'the tokenizer does not match the checkpoint\'s ({diffs}); '
                     'use the tokenizer the checkpoint was trained with.')
  bad, ok = [], []
  saved = {**saved, 'model_config': _normalised(saved.get('model_config', {}))}
  compute = models.get(current['model_config']['family']).compute_fields
  fixed = RunConfig.fixed_keys()
  for field in ('model_config', 'tokenizer', 'config'):
    for key, was, now in config_changes(saved.get(field, {}), current[field]):
      line = f'{field}.{key}: {was!r} -> {now!r}'
      if field == 'model_config':
        harmless = key in compute
      elif field == 'config':
        # A key older runs did not have, now at its default, changes nothing.
        harmless = key not in fixed or (was == '<absent>' and
                                        now == RunConfig.default_of(key))
      else:
        harmless = False
      (ok if harmless else bad).append(line)
  if bad:
    raise ValueError('the checkpoint was written by a different run (model, tokenizer '
                     'or data order); refusing to resume. Differences: '
                     + '; '.join(bad))
  return ok
