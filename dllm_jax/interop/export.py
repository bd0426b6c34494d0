"""A model as a Hugging Face directory that this project (`Engine.from_hf_dir`,
`launch.serve --hf_dir`) and the family's reference modeling code both load.

  export.write(params, cfg, '/out', tokenizer=tok, generation={...})

Writes:
  config.json             the family's released key names (`interop/hf_config.py`)
                          and the special ids (`{mask,bos,eos,eot,pad}_token_id`)
  model-*.safetensors     the weights in the family's released layout (per-expert
                          keys for the MoE families), in the parameters' own
                          dtype unless `dtype` asks for another (e.g. bfloat16)
  tokenizer files         a Hugging Face tokenizer's tokenizer.json (and its
                          tokenizer_config.json / special_tokens_map.json), or a
                          SentencePiece model as tokenizer.model; the byte
                          tokenizer has none (its ids are in config.json)
  tokenizer_config.json   with the special token texts (`mask_token`, ...)
  generation_config.json  the special ids and the run's sample settings
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from dllm_jax.interop import hf, hf_config, special_ids

_HF_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json',
                       'special_tokens_map.json')


def _write_json(path: str, name: str, value: dict) -> None:
  with open(os.path.join(path, name), 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write('\n')


def write_tokenizer(tok, path: str) -> None:
  """The tokenizer's files (module doc) with its special token texts."""
  if tok is None or tok.name == 'byte':
    return
  if tok.name == 'hf':
    for name in _HF_TOKENIZER_FILES:
      src = os.path.join(tok.path, name)
      if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(path, name))
  elif tok.name == 'sentencepiece':
    shutil.copyfile(tok.path, os.path.join(path, 'tokenizer.model'))
  else:
    raise ValueError(f'cannot export a {tok.name!r} tokenizer; known: hf, '
                     'sentencepiece, byte.')
  file = os.path.join(path, 'tokenizer_config.json')
  cfg = {}
  if os.path.isfile(file):
    with open(file) as f:
      cfg = json.load(f)
  cfg.update({f'{role}_token': text for role, text in tok.special_tokens.items()})
  _write_json(path, 'tokenizer_config.json', cfg)


def generation_config(cfg, sample: dict[str, Any] | None) -> dict[str, Any]:
  """generation_config.json: the special ids and the sample settings (`steps`,
  `gen_length`, `block_length`, `temperature`, and for a block-diffusion run
  `block_diffusion: true` with its trained block size as `block_length`)."""
  out = {**special_ids.config_keys(cfg.ids), '_from_model_config': False}
  out.update({k: v for k, v in (sample or {}).items() if v is not None})
  return out


def write(params, cfg, path: str, *, tokenizer=None, sample: dict[str, Any] | None = None,
          dtype: str | None = None, max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes the directory (module doc; it must be new or empty). `sample`:
  generation settings to record; `dtype`: cast the weights (default: their own
  dtype)."""
  if os.path.isdir(path) and os.listdir(path):
    raise ValueError(f'{path} exists and is not empty.')
  if tokenizer is not None and tokenizer.special_ids != cfg.ids:
    raise ValueError(f'the tokenizer\'s special ids {tokenizer.special_ids} are not the '
                     f'model config\'s {cfg.ids}.')
  if hasattr(cfg, 'hf_layout'):  # The reference code reads per-expert keys.
    cfg = dataclasses.replace(cfg, hf_layout='experts')
  config = hf_config.to_hf(cfg)
  if dtype is not None:
    config['torch_dtype'] = dtype
  os.makedirs(path, exist_ok=True)
  hf.save_params(params, cfg, path, dtype=dtype, max_shard_bytes=max_shard_bytes)
  _write_json(path, 'config.json', config)
  write_tokenizer(tokenizer, path)
  _write_json(path, 'generation_config.json', generation_config(cfg, sample))


def sample_settings(meta: dict) -> dict:
  """generation_config.json's sample settings of a run (its meta)."""
  s, train = meta['config']['sample'], meta['config']['train']
  out = {k: s.get(k) for k in ('steps', 'gen_length', 'block_length', 'temperature')}
  if train.get('objective') == 'block_diffusion':
    size = train.get('block', {}).get('block_size', s['block_length'])
    out.update(block_diffusion=True, block_length=size, steps=size)
  return out
