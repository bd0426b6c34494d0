"""Each family's config.json, with the key names of its released checkpoints
(what the reference modeling code reads), and back.

  d = hf_config.to_hf(cfg)            # {'model_type': 'llada2_moe', ...}
  cfg = hf_config.from_hf(d)          # the family picked from the keys

LLaDA: the OLMo-style keys of LLaDA-8B (`d_model`, `n_heads`, `mlp_hidden_size`,
...; `LLaDAModelLM`). LLaDA-MoE: configuration_lladamoe.py's (`hidden_size`,
`expert_intermediate_size`, `moe_layer_freq`, `moe_router_enable_expert_bias`,
...; `LLaDAMoEModelLM`). LLaDA2: configuration_llada2_moe.py's
(`first_k_dense_replace`, `n_group`, `num_shared_experts`, ...;
`LLaDA2MoeModelLM`). Special ids as `{mask,bos,eos,eot,pad}_token_id`. A config
the family's released code cannot express (a field the reference would read
differently) is refused in one line: `to_hf` reads its own output back and
names the first field that differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dllm_jax.interop import special_ids

# Fields that do not change the function the weights compute (or that the
# export sets itself): not compared on the way back.
_FREE = ('dtype', 'param_dtype', 'attention_impl', 'remat', 'scan_layers', 'embed_grad',
         'capacity_factor', 'aux_loss_coef', 'bias_update_rate', 'hf_layout', 'init_std', 'moe_impl')


def _llada(cfg) -> dict[str, Any]:
  return {
      'model_type': 'llada', 'architectures': ['LLaDAModelLM'], 'd_model': cfg.d_model,
      'n_heads': cfg.n_heads, 'n_kv_heads': cfg.n_heads, 'n_layers': cfg.n_layers,
      'mlp_hidden_size': cfg.d_ff, 'mlp_ratio': max(1, cfg.d_ff // cfg.d_model),
      'max_sequence_length': cfg.max_len, 'vocab_size': cfg.vocab_size,
      'embedding_size': cfg.vocab_size, 'rope': True, 'rope_theta': cfg.rope_theta,
      'rms_norm_eps': cfg.norm_eps, 'layer_norm_type': 'rms', 'activation_type': 'silu',
      'block_type': 'llama', 'block_group_size': 1, 'alibi': False,
      'include_bias': False, 'include_qkv_bias': False, 'weight_tying': False,
      'attention_layer_norm': False, 'input_emb_norm': False, 'scale_logits': False,
      'flash_attention': False, 'multi_query_attention': None,
      'attention_dropout': 0.0, 'residual_dropout': 0.0, 'embedding_dropout': 0.0,
      'init_device': 'cpu', 'init_std': cfg.init_std, 'use_cache': False}


def _llada_moe(cfg) -> dict[str, Any]:
  if cfg.head_dim * cfg.n_heads != cfg.d_model:
    raise ValueError(f'the llada_moe config.json cannot express head_dim={cfg.head_dim} '
                     f'!= d_model / n_heads (the released code takes hidden_size / '
                     'num_attention_heads).')
  return {
      'model_type': 'lladamoe', 'architectures': ['LLaDAMoEModelLM'],
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.d_model,
      'dense_intermediate_size': cfg.d_ff, 'expert_intermediate_size': cfg.moe_d_ff,
      'shared_expert_intermediate_size': cfg.shared_d_ff or None,
      'num_hidden_layers': cfg.n_layers, 'num_attention_heads': cfg.n_heads,
      'num_key_value_heads': cfg.n_kv_heads, 'head_dim': cfg.head_dim,
      'hidden_act': 'silu', 'max_position_embeddings': cfg.max_len,
      'rms_norm_eps': cfg.norm_eps, 'rope_theta': cfg.rope_theta,
      'partial_rotary_factor': cfg.rotary_fraction, 'num_experts': cfg.n_experts,
      'num_experts_per_tok': cfg.top_k, 'norm_topk_prob': False, 'qk_layernorm': True,
      'moe_layer_freq': [int(cfg.is_moe(i)) for i in range(cfg.n_layers)],
      'moe_router_enable_expert_bias': cfg.expert_bias,
      'moe_router_score_function': 'softmax', 'attention_bias': False,
      'tie_word_embeddings': False, 'use_cache': False,
      'initializer_range': cfg.init_std}


def _llada2(cfg) -> dict[str, Any]:
  shared = cfg.shared_d_ff // cfg.moe_d_ff if cfg.moe_d_ff else 0
  return {
      'model_type': 'llada2_moe', 'architectures': ['LLaDA2MoeModelLM'],
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.d_model,
      'intermediate_size': cfg.d_ff, 'moe_intermediate_size': cfg.moe_d_ff,
      'num_hidden_layers': cfg.n_layers, 'num_attention_heads': cfg.n_heads,
      'num_key_value_heads': cfg.n_kv_heads, 'head_dim': cfg.head_dim,
      'hidden_act': 'silu', 'use_qkv_bias': False, 'use_qk_norm': True,
      'use_bias': False, 'norm_head': False, 'rms_norm_eps': cfg.norm_eps,
      'max_position_embeddings': cfg.max_len, 'rope_theta': cfg.rope_theta,
      'partial_rotary_factor': cfg.rotary_fraction, 'num_experts': cfg.n_experts,
      'num_shared_experts': shared, 'num_experts_per_tok': cfg.top_k,
      'n_group': cfg.n_group, 'topk_group': cfg.topk_group,
      'routed_scaling_factor': cfg.routed_scaling, 'norm_topk_prob': cfg.norm_topk_prob,
      'first_k_dense_replace': cfg.first_k_dense,
      'moe_router_enable_expert_bias': cfg.expert_bias, 'router_dtype': 'fp32',
      'score_function': 'sigmoid', 'tie_word_embeddings': False, 'use_cache': False,
      'embedding_dropout': 0.0, 'attention_dropout': 0.0, 'output_dropout': 0.0,
      'initializer_range': cfg.init_std}


WRITERS = {'llada': _llada, 'llada_moe': _llada_moe, 'llada2': _llada2}


def from_hf(hf_config: dict, ids=None, **overrides: Any):
  """Our config of a config.json (any built-in family). `ids`: the tokenizer's
  special ids (default: config.json's)."""
  from dllm_jax.interop import llada_hf, moe_hf  # pylint: disable=g-import-not-at-top
  if 'llada2' in str(hf_config.get('model_type', '')) or 'num_experts' in hf_config:
    if ids is not None:
      overrides['ids'] = ids
    return moe_hf.config_from_hf(hf_config, **overrides)
  cfg = llada_hf.config_from_hf(hf_config, ids=ids, where='config.json')
  return dataclasses.replace(cfg, **overrides) if overrides else cfg


def to_hf(cfg) -> dict[str, Any]:
  """config.json of a model config (module doc); ValueError (one line) when the
  family's released code cannot express it."""
  family = type(cfg).family
  if family not in WRITERS:
    raise ValueError(f'model family {family!r} has no Hugging Face config.json '
                     f'layout; exportable: {sorted(WRITERS)}.')
  out = {**WRITERS[family](cfg), **special_ids.config_keys(cfg.ids),
         'torch_dtype': cfg.param_dtype}
  back = from_hf(out, ids=cfg.ids)
  layout = ('first_k_dense', 'moe_layer_freq')  # Compared as the MoE layers.
  if hasattr(cfg, 'moe_layers') and back.moe_layers != cfg.moe_layers:
    raise ValueError(f'the {family} config.json cannot express MoE layers '
                     f'{list(cfg.moe_layers)} (read back as {list(back.moe_layers)}).')
  for f in dataclasses.fields(cfg):
    if (f.name not in _FREE + layout and
        getattr(back, f.name) != getattr(cfg, f.name)):
      raise ValueError(f'the {family} config.json cannot express {f.name}='
                       f'{getattr(cfg, f.name)!r} (the released code reads it back as '
                       f'{getattr(back, f.name)!r}).')
  return out


__all__ = ['WRITERS', 'from_hf', 'to_hf']
