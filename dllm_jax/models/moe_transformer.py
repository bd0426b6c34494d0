"""The mixture-of-experts mask predictor shared by `llada_moe` and `llada2`.

Pure functions over a nested dict of parameters (no module objects):

  embed.embedding [V, D]
  layers.N.attn_norm.weight [D]
  layers.N.attn.{q,k,v}.kernel [D, H*Dh]  (or qkv.kernel [D, (Hq+2Hkv)*Dh]: the
      fused LLaDA2 layout, Q block, K block, V block), o.kernel [Hq*Dh, D],
      {q_norm,k_norm}.weight [Dh]
  layers.N.ffn_norm.weight [D]
  layers.N.mlp.{gate,up}.kernel [D, F], down.kernel [F, D]      (dense layers)
  layers.N.moe.router.kernel [D, E] (float32), moe.expert_bias [E] (float32,
      sigmoid routers), moe.experts.gate_up [E, D, 2, I] (gate, up), experts.down [E, I, D],
      moe.shared.{gate,up,down}.kernel                          (MoE layers)
  final_norm.weight [D], head.kernel [D, V]

Pre-norm layers; grouped-query attention with a per-head RMSNorm of queries and
keys before RoPE, which may rotate only the first part of each head; SwiGLU
feed-forward; dense layers (the first `first_k_dense`, or those `moe_layer_freq`
marks 0), the rest routed experts (models/moe.py) plus optional shared experts
fed the same normed input.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp

from dllm_jax.models import attention as attention_lib
from dllm_jax.models import moe as moe_lib
from dllm_jax.models.base import Family
from dllm_jax.models.layers import default_positions, rms_norm, rope, swiglu
from dllm_jax.models.moe_config import HF_LAYOUTS, MoEConfig, bf16_bytes
from dllm_jax.parallel.sharding import constrain

_ACT = ('batch', 'length', 'act_embed')
_HEADS = ('batch', 'length', 'heads', 'head_dim')
_LOGITS = ('batch', 'length', 'vocab')


def init_params(cfg: MoEConfig, key: jax.Array) -> dict:
  """Random parameters (normal(init_std) matrices, unit norms, zero biases)."""
  keys = iter(jax.random.split(key, 16 * cfg.n_layers + 4))
  pdt = jnp.dtype(cfg.param_dtype)
  normal = lambda *shape: (cfg.init_std * jax.random.normal(next(keys), shape)).astype(pdt)
  ones = lambda n: {'weight': jnp.ones((n,), pdt)}
  kernel = lambda *shape: {'kernel': normal(*shape)}
  d, dh, hq, hkv = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads

  def mlp_params(width):
    return {'gate': kernel(d, width), 'up': kernel(d, width), 'down': kernel(width, d)}

  layers = {}
  for i in range(cfg.n_layers):
    attn = {'o': kernel(hq * dh, d), 'q_norm': ones(dh), 'k_norm': ones(dh)}
    if cfg.fused_qkv:
      attn['qkv'] = kernel(d, (hq + 2 * hkv) * dh)
    else:
      attn.update(q=kernel(d, hq * dh), k=kernel(d, hkv * dh), v=kernel(d, hkv * dh))
    layer = {'attn_norm': ones(d), 'attn': attn, 'ffn_norm': ones(d)}
    if not cfg.is_moe(i):
      layer['mlp'] = mlp_params(cfg.d_ff)
    else:
      e, f = cfg.n_experts, cfg.moe_d_ff
      moe = {'router': {'kernel': (cfg.init_std * jax.random.normal(
                 next(keys), (d, e))).astype(jnp.float32)},
             'experts': {'gate_up': normal(e, d, 2, f), 'down': normal(e, f, d)}}
      if cfg.expert_bias:
        moe['expert_bias'] = jnp.zeros((e,), jnp.float32)
      if cfg.shared_d_ff:
        moe['shared'] = mlp_params(cfg.shared_d_ff)
      layer['moe'] = moe
    layers[i] = layer
  return {'embed': {'embedding': normal(cfg.vocab_size, d)}, 'layers': layers,
          'final_norm': ones(d), 'head': kernel(d, cfg.vocab_size)}


def _mm(x: jax.Array, p: dict) -> jax.Array:
  return x @ p['kernel'].astype(x.dtype)


def _swiglu(p: dict, x: jax.Array) -> jax.Array:
  return _mm(swiglu(_mm(x, p['gate']), _mm(x, p['up'])), p['down'])


def _rope(cfg: MoEConfig, x: jax.Array, positions: jax.Array) -> jax.Array:
  rd = cfg.rotary_dim
  if rd == cfg.head_dim:
    return rope(x, positions, cfg.rope_theta)
  return jnp.concatenate([rope(x[..., :rd], positions, cfg.rope_theta), x[..., rd:]], -1)


def _qkv(cfg: MoEConfig, p: dict, h: jax.Array, positions: jax.Array):
  """Queries [B, L, Hq, Dh] and keys/values [B, L, Hkv, Dh] (after RoPE)."""
  b, l, _ = h.shape
  hq, hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  if 'qkv' in p:
    q, k, v = jnp.split(_mm(h, p['qkv']), [hq * dh, (hq + hkv) * dh], -1)
  else:
    q, k, v = _mm(h, p['q']), _mm(h, p['k']), _mm(h, p['v'])
  heads = lambda t, n: constrain(t.reshape(b, l, n, dh), _HEADS)
  norm = lambda t, w: rms_norm(t, w['weight'], cfg.norm_eps, h.dtype)
  q = _rope(cfg, norm(heads(q, hq), p['q_norm']), positions)
  k = _rope(cfg, norm(heads(k, hkv), p['k_norm']), positions)
  return q, k, heads(v, hkv)


def _moe(cfg: MoEConfig, p: dict, h: jax.Array):
  """Routed (+ shared) experts of h [B, L, D] -> (y [B, L, D], stats)."""
  b, l, d = h.shape
  x = h.reshape(b * l, d)
  logits = x.astype(jnp.float32) @ p['router']['kernel'].astype(jnp.float32)
  idx, w, scores = moe_lib.route(
      logits, router=cfg.router, top_k=cfg.top_k, bias=p.get('expert_bias'),
      n_group=cfg.n_group, topk_group=cfg.topk_group,
      norm_topk_prob=cfg.norm_topk_prob, scaling=cfg.routed_scaling)
  e = p['experts']
  y, dropped = moe_lib.experts_ffn(x, idx, w, e['gate_up'], e['down'],
                                   capacity_factor=cfg.capacity_factor,
                                   impl=cfg.moe_impl)
  if 'shared' in p:
    y = y + _swiglu(p['shared'], x).astype(jnp.float32)
  load = jnp.bincount(idx.reshape(-1), length=cfg.n_experts).astype(jnp.float32)
  # Switch-style balance loss: E * sum_e (share of assignments) * (mean score).
  probs = scores / jnp.sum(scores, -1, keepdims=True)
  balance = cfg.n_experts * jnp.sum(load / (b * l * cfg.top_k) * jnp.mean(probs, 0))
  stats = {'load': load, 'balance': balance, 'dropped': dropped.astype(jnp.float32)}
  return y.reshape(b, l, d).astype(h.dtype), stats


def layer(cfg: MoEConfig, p: dict, x: jax.Array, spec, positions: jax.Array,
          kv=None, start=None):
  """One pre-norm layer: x [B, W, D] -> (x, k, v, stats or None). With `kv`
  (caches [B, T, Hkv, Dh]) the window's keys/values are written at `start` and
  its queries attend over the whole cache."""
  b, l, _ = x.shape
  impl = attention_lib.choose_implementation(cfg.attention_impl, cfg.dtype, cfg.head_dim)
  h = rms_norm(x, p['attn_norm']['weight'], cfg.norm_eps, x.dtype)
  q, k, v = _qkv(cfg, p['attn'], h, positions)
  if kv is not None:
    k = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), start, 1)
    v = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), start, 1)
  o = attention_lib.attend(q, k, v, spec, q_start=start, implementation=impl)
  x = constrain(x + _mm(o.reshape(b, l, -1), p['attn']['o']), _ACT)
  h = rms_norm(x, p['ffn_norm']['weight'], cfg.norm_eps, x.dtype)
  if 'mlp' in p:
    return constrain(x + _swiglu(p['mlp'], h), _ACT), k, v, None
  y, stats = _moe(cfg, p['moe'], h)
  return constrain(x + y, _ACT), k, v, stats


def _embed(cfg: MoEConfig, params: dict, tokens: jax.Array) -> jax.Array:
  table = params['embed']['embedding']
  return constrain(jnp.take(table, tokens, axis=0).astype(jnp.dtype(cfg.dtype)), _ACT)


def _head(cfg: MoEConfig, params: dict, x: jax.Array, output_window=None):
  h = rms_norm(x, params['final_norm']['weight'], cfg.norm_eps, x.dtype)
  if output_window is not None:
    h = jax.lax.dynamic_slice_in_dim(h, output_window[0], output_window[1], axis=1)
  return constrain(_mm(h, params['head']), _LOGITS)


def _stack_stats(stats: list[dict]) -> dict[str, Any]:
  if not stats:
    return {}
  return jax.tree.map(lambda *s: jnp.stack(s), *stats)


def _run(cfg: MoEConfig, params: dict, tokens, spec, positions, with_kv: bool):
  b, l = tokens.shape
  positions = default_positions(positions, b, l)
  x = _embed(cfg, params, tokens)
  ks, vs, stats = [], [], []
  for i in range(cfg.n_layers):
    fn = lambda p, x: layer(cfg, p, x, spec, positions)
    if cfg.remat != 'none' and not with_kv:
      fn = jax.checkpoint(fn, policy=None if cfg.remat == 'full' else
                          jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    x, k, v, s = fn(params['layers'][i], x)
    ks.append(k)
    vs.append(v)
    if s is not None:
      stats.append(s)
  return x, ks, vs, _stack_stats(stats)


def forward(params: dict, tokens: jax.Array, spec, positions=None, *, config: MoEConfig,
            output_window=None) -> jax.Array:
  """Logits [B, L, V] (or [B, length, V] of `output_window`) of tokens [B, L]."""
  return forward_aux(params, tokens, spec, positions, config=config,
                     output_window=output_window)[0]


def forward_aux(params: dict, tokens: jax.Array, spec, positions=None, *,
                config: MoEConfig, output_window=None):
  """(logits, aux): aux['loss'] the load-balance loss to add (times
  aux_loss_coef), aux['metrics'] scalars to log, aux['load'] [n_moe_layers, E]
  assignments per expert (what `after_step` balances)."""
  x, _, _, stats = _run(config, params, tokens, spec, positions, with_kv=False)
  logits = _head(config, params, x, output_window)
  if not stats:
    return logits, {'loss': jnp.zeros(()), 'metrics': {}, 'load': jnp.zeros((0, 0))}
  load = stats['load']
  ratio = load / jnp.maximum(jnp.mean(load, -1, keepdims=True), 1e-9)
  metrics = {'moe_dropped': jnp.sum(stats['dropped']),
             'moe_max_load': jnp.max(ratio), 'moe_min_load': jnp.min(ratio)}
  for n, i in enumerate(config.moe_layers):
    metrics[f'moe_layer{i}_max_load'] = jnp.max(ratio[n])
  loss = config.aux_loss_coef * jnp.mean(stats['balance'])
  return logits, {'loss': loss, 'metrics': metrics, 'load': load}


def after_step(new_params: dict, old_params: dict, aux: dict, *,
               config: MoEConfig) -> dict:
  """Aux-loss-free load balancing (LLaDA2 / DeepSeek-V3): every MoE layer's
  expert bias moves by rate * sign(mean load - load) from its value before the
  step; the optimizer's change to it (weight decay) is discarded, so the bias
  is never trained by gradients."""
  if not config.expert_bias:
    return new_params
  layers = dict(new_params['layers'])
  for n, i in enumerate(config.moe_layers):
    load = aux['load'][n]
    old = old_params['layers'][i]['moe']['expert_bias']
    bias = old + config.bias_update_rate * jnp.sign(jnp.mean(load) - load)
    moe = {**layers[i]['moe'], 'expert_bias': bias.astype(old.dtype)}
    layers[i] = {**layers[i], 'moe': moe}
  return {**new_params, 'layers': layers}


def prefill(params: dict, tokens: jax.Array, spec, positions=None, *,
            config: MoEConfig, output_window):
  """(logits of `output_window`, (keys, values) [n_layers, B, T, Hkv, Dh])."""
  x, ks, vs, _ = _run(config, params, tokens, spec, positions, with_kv=True)
  return _head(config, params, x, output_window), (jnp.stack(ks), jnp.stack(vs))


def window(params: dict, tokens: jax.Array, start, cache, spec, positions=None, *,
           config: MoEConfig, output_length: int):
  """Window [start, start + W) against the cache: (logits [B, output_length,
  V], updated cache)."""
  b, w = tokens.shape
  ks, vs = cache
  positions = jax.lax.dynamic_slice_in_dim(default_positions(positions, b, ks.shape[2]),
                                           start, w, axis=1)
  x = _embed(config, params, tokens)
  new_k, new_v = [], []
  for i in range(config.n_layers):
    x, k, v, _ = layer(config, params['layers'][i], x, spec, positions,
                       (ks[i], vs[i]), start)
    new_k.append(k)
    new_v.append(v)
  return _head(config, params, x, (0, output_length)), (jnp.stack(new_k),
                                                        jnp.stack(new_v))


_PARAM_AXES = {
    'embedding': ('vocab', 'embed'),
    'q': ('embed', 'heads'), 'k': ('embed', 'heads'), 'v': ('embed', 'heads'),
    'qkv': ('embed', 'heads'), 'o': ('heads', 'embed'),
    'gate': ('embed', 'mlp'), 'up': ('embed', 'mlp'), 'down': ('mlp', 'embed'),
    'router': ('embed', None), 'expert_bias': (None,),
    'head': ('embed', 'vocab'), 'weight': ('norm',),
}
_EXPERT_AXES = {'gate_up': ('experts', 'embed', None, 'mlp'),
                'down': ('experts', 'mlp', 'embed')}


def param_axes(names: tuple, ndim: int) -> tuple[str | None, ...]:
  """Logical axes of the parameter at the path `names`."""
  if 'experts' in names and names[-1] in _EXPERT_AXES:
    return _EXPERT_AXES[names[-1]]
  for name in reversed(names):
    if name in _PARAM_AXES and len(_PARAM_AXES[name]) == ndim:
      return _PARAM_AXES[name]
  return (None,) * ndim


def check_mesh(cfg: MoEConfig, mesh_shape) -> None:
  """One-line errors for a mesh the model cannot be split over."""
  ep, tp = mesh_shape.get('expert', 1), mesh_shape.get('tensor', 1)
  if cfg.n_experts % ep:
    raise ValueError(f'model n_experts={cfg.n_experts} is not divisible by the '
                     f'expert-parallel size mesh.expert={ep}.')
  for name in ('n_heads', 'n_kv_heads'):
    if getattr(cfg, name) % tp:
      raise ValueError(f'model {name}={getattr(cfg, name)} is not divisible by the '
                       f'tensor-parallel size mesh.tensor={tp}.')


COMPUTE_FIELDS = ('dtype', 'attention_impl', 'remat', 'moe_impl', 'capacity_factor',
                  'aux_loss_coef', 'bias_update_rate', 'hf_layout')


def family(name: str, config_cls: type, presets: Mapping[str, Mapping[str, Any]],
           hf_name_map: Callable[[MoEConfig], Iterator[Any]]) -> Family:
  """A family on this network: the name, config class, presets and Hugging
  Face names are its own; the calls and compute fields are this module's."""
  return Family(
      name=name, config_cls=config_cls, presets=presets, init_params=init_params,
      forward=forward, prefill=prefill, window=window, param_axes=param_axes,
      check_mesh=check_mesh, hf_name_map=hf_name_map, compute_fields=COMPUTE_FIELDS,
      forward_aux=forward_aux, after_step=after_step)


__all__ = ['MoEConfig', 'init_params', 'forward', 'forward_aux', 'after_step',
           'prefill', 'window', 'param_axes', 'check_mesh', 'COMPUTE_FIELDS',
           'HF_LAYOUTS', 'layer', 'bf16_bytes', 'family']
