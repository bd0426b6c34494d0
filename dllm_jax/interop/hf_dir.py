"""A local Hugging Face directory of any built-in family -> (config, parameters,
tokenizer, generation settings): released checkpoints and this project's
exports (`interop/export.py`) alike.

  loaded = hf_dir.load('/ckpt/LLaDA2.0-mini', dtype='bfloat16')
  loaded.config, loaded.params, loaded.tokenizer, loaded.generation

The family comes from config.json (LLaDA2 `model_type` llada2_moe*, LLaDA-MoE:
`num_experts`, else dense LLaDA). The tokenizer: `tokenizer.json` (with LLaDA's
special token texts unless tokenizer_config.json names a `mask_token`: then its
`{mask,bos,eos,eot,pad}_token`), else a SentencePiece `tokenizer.model`, else
none: the special ids then come from config.json (`interop/special_ids.py`)
and, when they are the byte tokenizer's, the byte tokenizer encodes.
`generation` is generation_config.json (or {}).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from dllm_jax import tokenizers as tokenizer_lib

ROLES_IN_CONFIG = {r: f'{r}_token' for r in tokenizer_lib.SPECIAL_ROLES}


class Loaded(NamedTuple):
  config: Any
  params: Any
  tokenizer: Any
  generation: dict


def read_json(path: str, name: str, required: bool = True) -> dict:
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    if required:
      raise FileNotFoundError(f'no {name} in {path!r}.')
    return {}
  with open(file) as f:
    return json.load(f)


def is_moe(hf_config: dict) -> bool:
  return 'llada2' in str(hf_config.get('model_type', '')) or 'num_experts' in hf_config


def named_special_tokens(path: str) -> dict[str, str]:
  """Special token texts tokenizer_config.json names (`mask_token`, ...)."""
  cfg = read_json(path, 'tokenizer_config.json', required=False)
  text = lambda t: t.get('content') if isinstance(t, dict) else t
  return {r: text(cfg[k]) for r, k in ROLES_IN_CONFIG.items() if text(cfg.get(k))}


def tokenizer(path: str, hf_config: dict):
  """The directory's tokenizer (module doc), or None when it has no files."""
  if os.path.isfile(os.path.join(path, 'tokenizer.json')):
    if is_moe(hf_config):
      from dllm_jax.interop import moe_hf  # pylint: disable=g-import-not-at-top
      return moe_hf.tokenizer(path)
    from dllm_jax.tokenizers.hf import HFTokenizer  # pylint: disable=g-import-not-at-top
    named = named_special_tokens(path)
    # Only a config that names the mask token (this project's exports) replaces
    # LLaDA's token texts: a released one may call its end of turn `eos_token`.
    return HFTokenizer(path, named if 'mask' in named else None)
  if os.path.isfile(os.path.join(path, 'tokenizer.model')):
    from dllm_jax.tokenizers.sp import SentencePieceTokenizer  # pylint: disable=g-import-not-at-top
    return SentencePieceTokenizer(os.path.join(path, 'tokenizer.model'),
                                  named_special_tokens(path))
  return None


def load(path: str, *, dtype: str | None = None) -> Loaded:
  """Everything `Engine.from_hf_dir` needs (module doc)."""
  from dllm_jax.interop import llada_hf, moe_hf  # pylint: disable=g-import-not-at-top
  hf_config = read_json(path, 'config.json')
  tok = tokenizer(path, hf_config)
  if is_moe(hf_config):
    overrides = {} if dtype is None else dict(dtype=dtype, param_dtype=dtype)
    if tok is not None:
      overrides['ids'] = tok.special_ids
      from dllm_jax.interop import special_ids  # pylint: disable=g-import-not-at-top
      special_ids.check_agrees(hf_config, tok.special_ids, path)
    config, params = moe_hf.load(path, **overrides)
  else:
    config = llada_hf.model_config(path, tok, dtype)
    params = llada_hf.load_params(path, config)
  if tok is None:
    if config.ids != tokenizer_lib.BYTE_IDS:
      raise ValueError(f'{path} has no tokenizer files (tokenizer.json or '
                       'tokenizer.model) and its special ids are not the byte '
                       "tokenizer's: add the checkpoint's tokenizer files.")
    tok = tokenizer_lib.ByteTokenizer()
  return Loaded(config, params, tok,
                read_json(path, 'generation_config.json', required=False))


def default_sampling(generation: dict):
  """The sample settings generation_config.json records (`interop/export.py`:
  `gen_length` and the rest; None without it): the block sampler with the
  trained block size for a block-diffusion export (as `Engine.from_workdir`),
  else the masked-diffusion sampler."""
  from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  keys = ('steps', 'gen_length', 'block_length', 'temperature')
  given = {k: generation[k] for k in keys if generation.get(k) is not None}
  if 'gen_length' not in given:  # Not this project's keys (HF: max_new_tokens, ...).
    return None
  if generation.get('block_diffusion'):
    size = given['block_length']
    return block.BlockSamplingConfig(
        gen_length=given.get('gen_length', size), block_length=size, steps=size,
        parallel='fixed', threshold=0.9, temperature=given.get('temperature', 0.0))
  return gen.SamplingConfig(**given)
