"""Released LLaDA-MoE and LLaDA2 checkpoints: config.json, expert layout and
tokenizer -> (config, parameters), and back.

  cfg, params = moe_hf.load('/ckpt/LLaDA2.0-mini', preset='llada2_mini',
                            sharding_for=...)
  tok = moe_hf.tokenizer('/ckpt/LLaDA2.0-mini')   # special ids from its files
  moe_hf.save(params, cfg, '/out')

The config comes from the checkpoint's `config.json` (a `preset` only checks
it: every shape field must agree, else a one-line error naming the key;
LLaDA-MoE's optional `moe_layer_freq`, `shared_expert_intermediate_size` and
`moe_router_enable_expert_bias` included; the special ids from the tokenizer
files, else from config.json: interop/special_ids.py); an
embedding padded past the vocabulary (`embedding_size` > `vocab_size`) makes
the model's vocabulary that many rows. The expert layout (per-expert keys,
veomni-fused `experts.{gate,up,down}_proj`, or `w13`/`w2`) is detected from the
tensor names. Reading is `interop/hf.py`'s: memory-mapped, tensor by tensor,
each placed where `sharding_for` says.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax

from dllm_jax import models
from dllm_jax.interop import hf, special_ids
from dllm_jax.models.llada_moe import RELEASED_IDS

# config.json key -> our field, per family (the first key present wins).
_COMMON = {
    'd_model': ('hidden_size',), 'n_layers': ('num_hidden_layers',),
    'n_heads': ('num_attention_heads',), 'n_kv_heads': ('num_key_value_heads',),
    'n_experts': ('num_experts',), 'top_k': ('num_experts_per_tok',),
    'rope_theta': ('rope_theta',), 'norm_eps': ('rms_norm_eps',),
    'max_len': ('max_position_embeddings',),
}
_FIELDS = {
    'llada2': {**_COMMON, 'd_ff': ('intermediate_size',),
               'moe_d_ff': ('moe_intermediate_size',),
               'first_k_dense': ('first_k_dense_replace',), 'n_group': ('n_group',),
               'topk_group': ('topk_group',),
               'routed_scaling': ('routed_scaling_factor',),
               'norm_topk_prob': ('norm_topk_prob',),
               'rotary_fraction': ('partial_rotary_factor',),
               'expert_bias': ('moe_router_enable_expert_bias',)},
    'llada_moe': {**_COMMON, 'd_ff': ('dense_intermediate_size',),
                  'moe_d_ff': ('moe_intermediate_size', 'expert_intermediate_size',
                               'intermediate_size'),
                  'shared_d_ff': ('shared_expert_intermediate_size',),
                  'moe_layer_freq': ('moe_layer_freq',),
                  'rotary_fraction': ('partial_rotary_factor',),
                  'expert_bias': ('moe_router_enable_expert_bias',)},
}


def family_of(hf_config: dict) -> str:
  """'llada2' for `model_type` llada2_moe*, 'llada_moe' for an MoE LLaDA."""
  model_type = str(hf_config.get('model_type', ''))
  if 'llada2' in model_type:
    return 'llada2'
  if 'num_experts' in hf_config:
    return 'llada_moe'
  raise ValueError(f'config.json model_type={model_type!r} is neither LLaDA2 '
                   '(llada2_moe) nor an LLaDA-MoE config (no num_experts).')


def config_from_hf(hf_config: dict, preset: str | None = None, **overrides: Any):
  """Our config of a checkpoint's config.json; with `preset`, a one-line
  ValueError for the first shape key that differs from the preset's."""
  family = family_of(hf_config)
  as_fields = lambda c: {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
  base = as_fields(models.get_preset(preset)) if preset else {}
  if preset and models.preset_family(preset).name != family:
    raise ValueError(f'config.json is a {family} checkpoint, preset {preset!r} is '
                     f'{models.preset_family(preset).name}.')
  template = models.get_preset(f'{family}_tiny')
  fields = as_fields(template)
  fields.update(base)
  from_file = {}
  for ours, keys in _FIELDS[family].items():
    key = next((k for k in keys if hf_config.get(k) is not None), None)
    if key is not None:
      from_file[ours] = (key, type(fields[ours])(hf_config[key]))
  vocab = hf_config['vocab_size']
  if hf_config.get('embedding_size', 0) > vocab:  # Rows padded past the vocabulary.
    vocab = hf_config['embedding_size']
  freq = from_file.get('moe_layer_freq')
  if freq and all(freq[1]):  # Every layer MoE: the default layout.
    del from_file['moe_layer_freq']
  from_file['vocab_size'] = ('vocab_size', vocab)
  d, h = from_file['d_model'][1], from_file['n_heads'][1]
  from_file['head_dim'] = ('head_dim', hf_config.get('head_dim') or d // h)
  if family == 'llada2':
    shared = hf_config.get('num_shared_experts') or 0
    from_file['shared_d_ff'] = ('num_shared_experts', shared * from_file['moe_d_ff'][1])
  for ours, (key, value) in from_file.items():
    if preset and ours in base and ours != 'max_len' and base[ours] != value:
      raise ValueError(f'config.json {key}={value} does not match preset '
                       f'{preset!r} ({ours}={base[ours]}).')
    fields[ours] = value
  if 'ids' not in overrides:  # Tokenizer files, when there are any, pass theirs.
    fields['ids'] = special_ids.ids_from_config(
        hf_config, vocab_size=vocab, defaults=base.get('ids', RELEASED_IDS),
        where='config.json')
  fields.update(overrides)
  return models.get(family).config_cls(**fields)


def detect_layout(names) -> str:
  """The expert layout of a checkpoint from its tensor names."""
  names = list(names)
  if any('.experts.0.' in n for n in names):
    return 'experts'
  if any(n.endswith('experts.gate_proj') for n in names):
    return 'fused'
  if any(n.endswith(('w13_weight', '.mlp.w1')) for n in names):
    return 'w13'
  raise ValueError('no expert tensors (experts.0.*, experts.gate_proj, w13_weight '
                   'or mlp.w1) in the checkpoint.')


def _read_json(path: str, name: str) -> dict:
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'no {name} in {path!r}.')
  with open(file) as f:
    return json.load(f)


def special_tokens(path: str) -> dict[str, str]:
  """Special token texts from a tokenizer's own files: BOS/EOS/pad from
  tokenizer_config.json, mask `<|mask|>` and end of turn `<|role_end|>` (the
  LLaDA2 / Ling names, unless its `mask_token` / `eot_token` say otherwise;
  their ids are looked up in tokenizer.json)."""
  cfg = _read_json(path, 'tokenizer_config.json')
  text = lambda t: t.get('content') if isinstance(t, dict) else t
  out = {'mask': '<|mask|>', 'eot': '<|role_end|>'}
  for role in ('mask', 'eot', 'bos', 'eos', 'pad'):  # mask/eot: this project's exports.
    if text(cfg.get(f'{role}_token')):
      out[role] = text(cfg[f'{role}_token'])
  out.setdefault('pad', out.get('eos'))
  missing = [r for r in ('bos', 'eos') if not out.get(r)]
  if missing:
    raise ValueError(f'{path}/tokenizer_config.json names no {missing[0]}_token.')
  return out


def tokenizer(path: str):
  """The checkpoint's Hugging Face tokenizer with its special ids (`hf:DIR`
  with the LLaDA2 special token names)."""
  from dllm_jax.tokenizers.hf import HFTokenizer  # pylint: disable=g-import-not-at-top
  return HFTokenizer(path, special_tokens=special_tokens(path))


def load(path: str, preset: str | None = None, *,
         sharding_for: Callable[[tuple, tuple], jax.sharding.Sharding] | None = None,
         dtype: str | None = None, **overrides: Any):
  """(config, parameters) of a released checkpoint directory (module doc). The
  special ids come from the directory's tokenizer files when it has them (and
  must agree with config.json's), else from config.json
  (`interop/special_ids.py`)."""
  hf_config = _read_json(path, 'config.json')
  layout = detect_layout(hf._weight_files(path))  # pylint: disable=protected-access
  if 'ids' not in overrides and os.path.isfile(os.path.join(path, 'tokenizer.json')):
    overrides['ids'] = tokenizer(path).special_ids
    special_ids.check_agrees(hf_config, overrides['ids'], path)
  cfg = config_from_hf(hf_config, preset, hf_layout=layout, **overrides)
  return cfg, hf.load_params(path, cfg, sharding_for=sharding_for, dtype=dtype)


def save(params, cfg, path: str, **kw) -> None:
  """Writes the parameters in the config's HF layout (`cfg.hf_layout`)."""
  hf.save_params(params, cfg, path, **kw)
