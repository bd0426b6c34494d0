"""The `llada` family: LLaDA's dense mask predictor (Flax NNX).

Pre-norm Transformer: RMSNorm, SwiGLU feed-forward, rotary position embedding,
attention as the caller's `AttentionSpec` says (bidirectional for the mask
predictor; `causal=True` in the config makes causal the default: the
autoregressive twin), no biases, untied input embedding and output head.
Parameter names follow the LLaDA Hugging Face layout (`wte`, `blocks.N.{q_proj,
...}`, `ln_f`, `ff_out`). `FAMILY` is what the registry (`models/registry.py`)
hands to the rest of the library.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.models import attention as attention_lib
from dllm_jax.models.base import Family, Params
from dllm_jax.models.layers import default_positions, rms_norm, rope, swiglu
from dllm_jax.parallel.sharding import constrain

# The config and presets live in llada_config.py; re-exported as the family's.
from dllm_jax.models.llada_config import (  # pylint: disable=g-bad-import-order
    BYTE_VOCAB, DTYPES, EMBED_GRADS, PRESETS, REMAT_POLICIES, ModelConfig)

__all__ = ['BYTE_VOCAB', 'DTYPES', 'EMBED_GRADS', 'PRESETS', 'REMAT_POLICIES',
           'ModelConfig', 'FAMILY', 'Transformer', 'init_params', 'forward',
           'prefill', 'window', 'param_axes', 'check_mesh', 'hf_name_map']


def _linear(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      d_in, d_out, use_bias=False, dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=nnx.initializers.normal(cfg.init_std), rngs=rngs)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32, output in the compute dtype."""

  def __init__(self, cfg: ModelConfig):
    self.eps = cfg.norm_eps
    self.dtype = jnp.dtype(cfg.dtype)
    self.weight = nnx.Param(jnp.ones((cfg.d_model,), jnp.dtype(cfg.param_dtype)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.weight[...], self.eps, self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def embed_onehot_grad(table: jax.Array, ids: jax.Array, dtype) -> jax.Array:
  """table[ids] in `dtype`, whose gradient is a one-hot product instead of a
  scatter-add (the scatter of N rows into a [V, D] table can be slow: 10% of the
  llada_1b step on an H100, experiments/perf_notes.md)."""
  return jnp.take(table, ids, axis=0).astype(dtype)


def _embed_fwd(table, ids, dtype):
  return embed_onehot_grad(table, ids, dtype), (ids, table)


def _embed_bwd(dtype, res, g):
  del dtype
  ids, table = res
  flat_g = g.reshape(-1, g.shape[-1])
  onehot = jax.nn.one_hot(ids.reshape(-1), table.shape[0], dtype=flat_g.dtype)
  grad = jnp.einsum('nv,nd->vd', onehot, flat_g, preferred_element_type=jnp.float32)
  return grad.astype(table.dtype), None


embed_onehot_grad.defvjp(_embed_fwd, _embed_bwd)


def attention_impl(cfg: ModelConfig) -> str:
  """The attention kernel for this config (`attention.choose_implementation`)."""
  return attention_lib.choose_implementation(cfg.attention_impl, cfg.dtype,
                                             cfg.head_dim)


# Logical axes of the main activations (parallel/sharding.py maps them to a mesh).
_ACT = ('batch', 'length', 'act_embed')
_HEADS = ('batch', 'length', 'heads', 'head_dim')
_MLP = ('batch', 'length', 'mlp')
_LOGITS = ('batch', 'length', 'vocab')
_REMAT = {'full': None, 'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class Block(nnx.Module):
  """One pre-norm Transformer block."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, f = cfg.d_model, cfg.d_ff
    self.attn_norm = RMSNorm(cfg)
    self.q_proj = _linear(cfg, d, d, rngs)
    self.k_proj = _linear(cfg, d, d, rngs)
    self.v_proj = _linear(cfg, d, d, rngs)
    self.attn_out = _linear(cfg, d, d, rngs)
    self.ff_norm = RMSNorm(cfg)
    self.ff_proj = _linear(cfg, d, f, rngs)  # Gated branch.
    self.up_proj = _linear(cfg, d, f, rngs)
    self.ff_out = _linear(cfg, f, d, rngs)

  def __call__(self, x: jax.Array, spec: attention_lib.AttentionSpec,
               positions: jax.Array) -> jax.Array:
    return self.with_kv(x, spec, positions)[0]

  def _qkv(self, x: jax.Array, positions: jax.Array):
    cfg = self.cfg
    b, l, _ = x.shape
    h = self.attn_norm(x)
    split = lambda t: constrain(t.reshape(b, l, cfg.n_heads, cfg.head_dim), _HEADS)
    q = rope(split(self.q_proj(h)), positions, cfg.rope_theta)
    k = rope(split(self.k_proj(h)), positions, cfg.rope_theta)
    return q, k, split(self.v_proj(h))

  def _finish(self, x, q, k, v, spec, q_start=None):
    cfg = self.cfg
    b, l, _ = x.shape
    o = attention_lib.attend(q, k, v, spec, q_start=q_start,
                             implementation=attention_impl(cfg))
    x = constrain(x + self.attn_out(o.reshape(b, l, cfg.d_model)), _ACT)
    h = self.ff_norm(x)
    g = constrain(swiglu(self.ff_proj(h), self.up_proj(h)), _MLP)
    return constrain(x + self.ff_out(g), _ACT)

  def with_kv(self, x: jax.Array, spec: attention_lib.AttentionSpec,
              positions: jax.Array):
    """(output [B, L, D], keys [B, L, H, Dh] (after RoPE), values)."""
    q, k, v = self._qkv(x, positions)
    return self._finish(x, q, k, v, spec), k, v

  def cached(self, x: jax.Array, spec: attention_lib.AttentionSpec,
             positions: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
             start: jax.Array | int):
    """A window of W positions starting at `start` attending over a cache of all
    T positions, with the window's fresh keys/values written into it.
    x [B, W, D], caches [B, T, H, Dh] -> (output, new caches)."""
    q, k, v = self._qkv(x, positions)
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype),
                                                  start, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype),
                                                  start, axis=1)
    return self._finish(x, q, k_cache, v_cache, spec, start), k_cache, v_cache


class Transformer(nnx.Module):
  """The mask predictor: tokens [B, L] -> logits [B, L, V]."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                         param_dtype=jnp.dtype(cfg.param_dtype),
                         embedding_init=nnx.initializers.normal(cfg.init_std),
                         rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.ln_f = RMSNorm(cfg)
    self.ff_out = _linear(cfg, cfg.d_model, cfg.vocab_size, rngs)  # Output head.

  def embed(self, tokens: jax.Array) -> jax.Array:
    if self.cfg.embed_grad == 'onehot':
      x = embed_onehot_grad(self.wte.embedding[...], tokens, jnp.dtype(self.cfg.dtype))
    else:
      x = self.wte(tokens)
    return constrain(x, _ACT)

  def hidden(self, tokens: jax.Array, spec: attention_lib.AttentionSpec,
             positions: jax.Array | None = None) -> jax.Array:
    """Final normalised hidden states [B, L, D] (before the output head)."""
    b, l = tokens.shape
    positions = default_positions(positions, b, l)
    x = self.embed(tokens)
    cfg = self.cfg
    if not cfg.scan_layers and cfg.remat == 'none':
      for block in self.blocks:
        x = block(x, spec, positions)
      return self.ln_f(x)
    block_def = nnx.graphdef(self.blocks[0])  # Every block has the same structure.

    def body(x, block_state):
      return nnx.merge(block_def, block_state)(x, spec, positions), None
    if cfg.remat != 'none':
      body = jax.checkpoint(body, policy=_REMAT[cfg.remat],
                            prevent_cse=not cfg.scan_layers)
    states = [nnx.state(block) for block in self.blocks]
    if cfg.scan_layers:
      stacked = jax.tree.map(lambda *w: jnp.stack(w), *states)
      x, _ = jax.lax.scan(body, x, stacked)
    else:
      for state in states:
        x, _ = body(x, state)
    return self.ln_f(x)

  def head(self, h: jax.Array, output_window=None) -> jax.Array:
    """Logits of hidden states h [B, L, D], or of rows [start, start + length)."""
    if output_window is not None:
      start, length = output_window
      h = jax.lax.dynamic_slice_in_dim(h, start, length, axis=1)
    return constrain(self.ff_out(h), _LOGITS)

  def hidden_with_kv(self, tokens, spec, positions):
    """Final hidden states [B, T, D] and every layer's keys and values, stacked
    [n_layers, B, T, H, Dh] (a KV cache of the whole canvas; unrolled layers)."""
    b, l = tokens.shape
    positions = default_positions(positions, b, l)
    x = self.embed(tokens)
    ks, vs = [], []
    for block in self.blocks:
      x, k, v = block.with_kv(x, spec, positions)
      ks.append(k)
      vs.append(v)
    return self.ln_f(x), jnp.stack(ks), jnp.stack(vs)

  def hidden_window(self, tokens, start, spec, positions, ks, vs):
    """Hidden states of the W positions [start, start + W) of a T-position canvas
    (`tokens` [B, W]), attending over cached keys/values [n_layers, B, T, H, Dh]
    in which the window's fresh ones replace the cached ones. `spec` and
    `positions` are the whole canvas's ([B, T] arrays, or None). Returns
    (h, ks, vs)."""
    b, w = tokens.shape
    t = ks.shape[2]
    positions = jax.lax.dynamic_slice_in_dim(default_positions(positions, b, t),
                                             start, w, axis=1)
    x = self.embed(tokens)
    new_k, new_v = [], []
    for i, block in enumerate(self.blocks):
      x, k, v = block.cached(x, spec, positions, ks[i], vs[i], start)
      new_k.append(k)
      new_v.append(v)
    return self.ln_f(x), jnp.stack(new_k), jnp.stack(new_v)


@functools.lru_cache(maxsize=None)
def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  """The (static) NNX graph definition of a config, built without allocating."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
  """Random parameters as a nested dict of arrays (jit it to init in place)."""
  model = Transformer(cfg, nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def forward(params: Params, tokens: jax.Array, spec: attention_lib.AttentionSpec,
            positions: jax.Array | None = None, *, config: ModelConfig,
            output_window: tuple[jax.Array, int] | None = None) -> jax.Array:
  """Logits [B, L, V] (or [B, length, V] of `output_window`) of tokens [B, L]."""
  m = nnx.merge(graphdef(config), params)
  return m.head(m.hidden(tokens, spec, positions), output_window)


def prefill(params: Params, tokens: jax.Array, spec: attention_lib.AttentionSpec,
            positions: jax.Array | None = None, *, config: ModelConfig,
            output_window: tuple[jax.Array, int]):
  """(logits of `output_window`, (keys, values) [n_layers, B, T, H, Dh])."""
  m = nnx.merge(graphdef(config), params)
  h, ks, vs = m.hidden_with_kv(tokens, spec, positions)
  return m.head(h, output_window), (ks, vs)


def window(params: Params, tokens: jax.Array, start: jax.Array | int, cache,
           spec: attention_lib.AttentionSpec, positions: jax.Array | None = None,
           *, config: ModelConfig, output_length: int):
  """(logits [B, output_length, V] of the window's first rows, updated cache)."""
  m = nnx.merge(graphdef(config), params)
  h, ks, vs = m.hidden_window(tokens, start, spec, positions, *cache)
  return m.head(h, (0, output_length)), (ks, vs)


# Parameter name (a key on its path) -> logical axes (parallel/sharding.py).
_PARAM_AXES = {
    'embedding': ('vocab', 'embed'),  # wte [V, D]
    'q_proj': ('embed', 'heads'), 'k_proj': ('embed', 'heads'),
    'v_proj': ('embed', 'heads'), 'attn_out': ('heads', 'embed'),
    'ff_proj': ('embed', 'mlp'), 'up_proj': ('embed', 'mlp'),
    'ff_out': ('mlp', 'embed'),  # In a block; the output head is [D, V]:
    'head': ('embed', 'vocab'),
    'weight': ('norm',),
}


def param_axes(names: tuple, ndim: int) -> tuple[str | None, ...]:
  """Logical axes of the parameter at the path `names` (keys of the params)."""
  for name in reversed(names):
    if name == 'ff_out' and 'blocks' not in names:
      name = 'head'
    if name in _PARAM_AXES and len(_PARAM_AXES[name]) == ndim:
      return _PARAM_AXES[name]
  return (None,) * ndim


def check_mesh(cfg: ModelConfig, mesh_shape) -> None:
  tp = mesh_shape.get('tensor', 1)
  for name in ('n_heads', 'd_ff'):
    if getattr(cfg, name) % tp:
      raise ValueError(f'model {name}={getattr(cfg, name)} is not divisible by '
                       f'the tensor-parallel size mesh.tensor={tp}.')


HF_PREFIX = 'model.transformer.'
_HF_LINEARS = ('q_proj', 'k_proj', 'v_proj', 'attn_out', 'ff_proj', 'up_proj', 'ff_out')
_HF_NORMS = ('attn_norm', 'ff_norm')


def hf_name_map(cfg: ModelConfig) -> Iterator[tuple[str, tuple, bool]]:
  """(Hugging Face name, dllm_jax path, transpose?) for every parameter of the
  LLaDA layout: `model.transformer.wte.weight` [V, D]; `...blocks.N.{q_proj,
  ..., ff_out}.weight` [out, in]; `...blocks.N.{attn_norm,ff_norm}.weight`;
  `...ln_f.weight`; `...ff_out.weight` [V, D] (the untied output head)."""
  yield HF_PREFIX + 'wte.weight', ('wte', 'embedding'), False
  for n in range(cfg.n_layers):
    for lin in _HF_LINEARS:
      yield f'{HF_PREFIX}blocks.{n}.{lin}.weight', ('blocks', n, lin, 'kernel'), True
    for norm in _HF_NORMS:
      yield f'{HF_PREFIX}blocks.{n}.{norm}.weight', ('blocks', n, norm, 'weight'), False
  yield HF_PREFIX + 'ln_f.weight', ('ln_f', 'weight'), False
  yield HF_PREFIX + 'ff_out.weight', ('ff_out', 'kernel'), True


FAMILY = Family(
    name='llada', config_cls=ModelConfig, presets=PRESETS, init_params=init_params,
    forward=forward, prefill=prefill, window=window, param_axes=param_axes,
    check_mesh=check_mesh, hf_name_map=hf_name_map,
    compute_fields=('dtype', 'attention_impl', 'remat', 'scan_layers',
                    'embed_grad'))
