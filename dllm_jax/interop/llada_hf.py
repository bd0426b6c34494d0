"""LLaDA Hugging Face safetensors <-> dllm_jax parameters (the `llada` family).

The Hugging Face layout (LLaDA-8B-Base/Instruct): `model.transformer.wte.weight`
[V, D]; `model.transformer.blocks.N.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,
ff_out}.weight` as [out, in]; `...blocks.N.{attn_norm,ff_norm}.weight` [D];
`model.transformer.ln_f.weight` [D]; `model.transformer.ff_out.weight` [V, D]
(the untied output head). The map lives with the family
(`models/llada.py: hf_name_map`); reading and writing are `interop/hf.py`'s.
`model_config` reads the directory's `config.json` into a `ModelConfig`.
"""

import dataclasses
import json
import os

from dllm_jax.interop import special_ids
from dllm_jax.interop.hf import INDEX_FILE, load_params, save_params
from dllm_jax.models.llada import HF_PREFIX as PREFIX
from dllm_jax.models.llada import ModelConfig
from dllm_jax.models.llada import hf_name_map as name_map
from dllm_jax.models.llada_config import PRESETS

LLADA_IDS = PRESETS['llada_8b']['ids']  # LLaDA's documented ids (its vocabulary).

__all__ = ['INDEX_FILE', 'PREFIX', 'config_from_hf', 'load_params', 'model_config',
           'name_map', 'save_params']


def model_config(path: str, tokenizer=None, dtype: str | None = None) -> ModelConfig:
  """The `ModelConfig` of a local Hugging Face directory's `config.json` (the
  LLaDA family). The special ids come from `tokenizer` (and must agree with
  config.json's), else from config.json (`interop/special_ids.py`)."""
  file = os.path.join(path, 'config.json')
  if not os.path.isfile(file):
    raise FileNotFoundError(f'no config.json in {path!r}.')
  with open(file) as f:
    c = json.load(f)
  ids = None
  if tokenizer is not None:
    ids = tokenizer.special_ids
    special_ids.check_agrees(c, ids, path)
  cfg = config_from_hf(c, ids=ids, where=file)
  return cfg if dtype is None else dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype)


def config_from_hf(c: dict, *, ids=None, where: str = 'config.json') -> ModelConfig:
  """The `ModelConfig` of a LLaDA config.json dict; `ids` default: its own
  (`{mask,bos,eos,pad}_token_id`, LLaDA's documented ids where it names none)."""
  family = str(c.get('model_type') or ''.join(c.get('architectures', []))).lower()
  if 'llada' not in family:
    raise ValueError(f'{where}: model family {family!r} is not supported; known: llada.')
  if (c.get('n_kv_heads') or c['n_heads']) != c['n_heads']:
    raise ValueError(f'{where}: n_kv_heads={c["n_kv_heads"]} != n_heads='
                     f'{c["n_heads"]} (grouped-query attention) is not supported.')
  vocab = int(c.get('embedding_size') or c['vocab_size'])
  if ids is None:
    ids = special_ids.ids_from_config(c, vocab_size=vocab, defaults=LLADA_IDS, where=where)
  return ModelConfig(
      vocab_size=vocab, d_model=c['d_model'], n_layers=c['n_layers'],
      n_heads=c['n_heads'], d_ff=c['mlp_hidden_size'], max_len=c['max_sequence_length'],
      rope_theta=float(c.get('rope_theta', 10000.0)),
      norm_eps=float(c.get('rms_norm_eps', 1e-5)), ids=ids)
