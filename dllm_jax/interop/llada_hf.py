"""LLaDA Hugging Face safetensors <-> dllm_jax parameters (the `llada` family).

The Hugging Face layout (LLaDA-8B-Base/Instruct): `model.transformer.wte.weight`
[V, D]; `model.transformer.blocks.N.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,
ff_out}.weight` as [out, in]; `...blocks.N.{attn_norm,ff_norm}.weight` [D];
`model.transformer.ln_f.weight` [D]; `model.transformer.ff_out.weight` [V, D]
(the untied output head). The map lives with the family
(`models/llada.py: hf_name_map`); reading and writing are `interop/hf.py`'s.
`model_config` reads the directory's `config.json` into a `ModelConfig`.
"""

import json
import os

from dllm_jax.interop.hf import INDEX_FILE, load_params, save_params
from dllm_jax.models.llada import HF_PREFIX as PREFIX
from dllm_jax.models.llada import ModelConfig
from dllm_jax.models.llada import hf_name_map as name_map

__all__ = ['INDEX_FILE', 'PREFIX', 'load_params', 'model_config', 'name_map',
           'save_params']


def model_config(path: str, tokenizer, dtype: str | None = None) -> ModelConfig:
  """The `ModelConfig` of a local Hugging Face directory's `config.json` (the
  LLaDA family; the special ids come from its tokenizer)."""
  file = os.path.join(path, 'config.json')
  if not os.path.isfile(file):
    raise FileNotFoundError(f'no config.json in {path!r}.')
  with open(file) as f:
    c = json.load(f)
  family = str(c.get('model_type') or ''.join(c.get('architectures', []))).lower()
  if 'llada' not in family:
    raise ValueError(f'{file}: model family {family!r} is not supported; known: llada.')
  if c.get('n_kv_heads', c['n_heads']) != c['n_heads']:
    raise ValueError(f'{file}: n_kv_heads={c["n_kv_heads"]} != n_heads='
                     f'{c["n_heads"]} (grouped-query attention) is not supported.')
  fields = dict(
      vocab_size=int(c.get('embedding_size') or c['vocab_size']), d_model=c['d_model'],
      n_layers=c['n_layers'], n_heads=c['n_heads'], d_ff=c['mlp_hidden_size'],
      max_len=c['max_sequence_length'], rope_theta=float(c.get('rope_theta', 10000.0)),
      norm_eps=float(c.get('rms_norm_eps', 1e-5)),
      ids=tokenizer.special_ids)
  if dtype is not None:
    fields.update(dtype=dtype, param_dtype=dtype)
  return ModelConfig(**fields)
