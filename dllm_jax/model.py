"""The LLaDA mask predictor (Flax NNX) and its pure forward function.

Pre-norm Transformer: RMSNorm, SwiGLU feed-forward, rotary position embedding,
bidirectional attention (`causal=True` gives the autoregressive twin), no biases,
untied input embedding and output head. Parameter names follow the LLaDA Hugging
Face layout (`wte`, `blocks.N.{q_proj,...}`, `ln_f`, `ff_out`).

The public entry points are pure:
  params = init_params(config, key)                  # nested dict of arrays
  logits = forward(params, tokens, segment_ids, positions, config=config)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.parallel.sharding import constrain
from dllm_jax.presets import ModelConfig

Params = dict  # Nested dict of arrays, as `nnx.to_pure_dict` returns.


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
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.weight[...].astype(jnp.float32)).astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding (rotate-half convention). x: [B, L, H, D], positions: [B, L]."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def segment_mask(segment_ids: jax.Array | None) -> jax.Array | None:
  """Boolean mask [B, 1, L, L]: a query attends to keys of its own segment.
  None when there are no segments (the causal part is `is_causal`)."""
  if segment_ids is None:
    return None
  return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


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
  """The `jax.nn.dot_product_attention` implementation to use: the config's, or
  cuDNN on a GPU with 16-bit compute and a head dim it supports, else XLA.
  (JAX's own default, None, always means XLA.)"""
  if cfg.attention_impl is not None:
    return cfg.attention_impl
  if (jax.default_backend() == 'gpu' and cfg.dtype == 'bfloat16'
      and cfg.head_dim % 8 == 0 and cfg.head_dim <= 128):
    return 'cudnn'
  return 'xla'


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

  def __call__(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array,
               kv_lengths: jax.Array | None = None) -> jax.Array:
    return self.with_kv(x, mask, positions, kv_lengths)[0]

  def _qkv(self, x: jax.Array, positions: jax.Array):
    cfg = self.cfg
    b, l, _ = x.shape
    h = self.attn_norm(x)
    split = lambda t: constrain(t.reshape(b, l, cfg.n_heads, cfg.head_dim), _HEADS)
    q = rope(split(self.q_proj(h)), positions, cfg.rope_theta)
    k = rope(split(self.k_proj(h)), positions, cfg.rope_theta)
    return q, k, split(self.v_proj(h))

  def _finish(self, x, q, k, v, mask, is_causal, kv_lengths=None):
    cfg = self.cfg
    b, l, _ = x.shape
    o = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                     key_value_seq_lengths=kv_lengths,
                                     implementation=attention_impl(cfg))
    x = constrain(x + self.attn_out(o.reshape(b, l, cfg.d_model)), _ACT)
    h = self.ff_norm(x)
    g = constrain(jax.nn.silu(self.ff_proj(h)) * self.up_proj(h), _MLP)
    return constrain(x + self.ff_out(g), _ACT)

  def with_kv(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array,
              kv_lengths: jax.Array | None = None):
    """(output [B, L, D], keys [B, L, H, Dh] (after RoPE), values)."""
    q, k, v = self._qkv(x, positions)
    return self._finish(x, q, k, v, mask, self.cfg.causal, kv_lengths), k, v

  def cached(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array,
             k_cache: jax.Array, v_cache: jax.Array, start: jax.Array | int):
    """A window of W positions starting at `start` attending over a cache of all
    T positions, with the window's fresh keys/values written into it.
    x [B, W, D], caches [B, T, H, Dh] -> (output, new caches)."""
    q, k, v = self._qkv(x, positions)
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype),
                                                  start, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype),
                                                  start, axis=1)
    return self._finish(x, q, k_cache, v_cache, mask, False), k_cache, v_cache


def _default_positions(positions, b, l):
  if positions is None:
    return jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  return positions


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

  def hidden(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None,
             kv_lengths: jax.Array | None = None) -> jax.Array:
    """Final normalised hidden states [B, L, D] (before the output head)."""
    b, l = tokens.shape
    positions = _default_positions(positions, b, l)
    mask = segment_mask(segment_ids)
    x = constrain(self.embed(tokens), _ACT)
    cfg = self.cfg
    if not cfg.scan_layers and cfg.remat == 'none':
      for block in self.blocks:
        x = block(x, mask, positions, kv_lengths)
      return self.ln_f(x)
    block_def = nnx.graphdef(self.blocks[0])  # Every block has the same structure.

    def body(x, block_state):
      return nnx.merge(block_def, block_state)(x, mask, positions, kv_lengths), None
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

  def embed(self, tokens: jax.Array) -> jax.Array:
    if self.cfg.embed_grad == 'onehot':
      return embed_onehot_grad(self.wte.embedding[...], tokens, jnp.dtype(self.cfg.dtype))
    return self.wte(tokens)

  def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None,
               output_window: tuple[jax.Array, int] | None = None,
               kv_lengths: jax.Array | None = None) -> jax.Array:
    return self.head(self.hidden(tokens, segment_ids, positions, kv_lengths),
                     output_window)

  def head(self, h: jax.Array, output_window=None) -> jax.Array:
    """Logits of hidden states h [B, L, D], or of rows [start, start + length)."""
    if output_window is not None:
      start, length = output_window
      h = jax.lax.dynamic_slice_in_dim(h, start, length, axis=1)
    return constrain(self.ff_out(h), _LOGITS)

  def hidden_with_kv(self, tokens, segment_ids, positions):
    """Final hidden states [B, T, D] and every layer's keys and values, stacked
    [n_layers, B, T, H, Dh] (a KV cache of the whole canvas; unrolled layers)."""
    b, l = tokens.shape
    positions = _default_positions(positions, b, l)
    mask = segment_mask(segment_ids)
    x = constrain(self.embed(tokens), _ACT)
    ks, vs = [], []
    for block in self.blocks:
      x, k, v = block.with_kv(x, mask, positions)
      ks.append(k)
      vs.append(v)
    return self.ln_f(x), jnp.stack(ks), jnp.stack(vs)

  def hidden_window(self, tokens, start, segment_ids, positions, ks, vs):
    """Hidden states of the W positions [start, start + W) of a T-position canvas
    (`tokens` [B, W]), attending over cached keys/values [n_layers, B, T, H, Dh]
    in which the window's fresh ones replace the cached ones. `segment_ids` and
    `positions` are the whole canvas's [B, T] (or None). Returns (h, ks, vs)."""
    b, w = tokens.shape
    t = ks.shape[2]
    positions = jax.lax.dynamic_slice_in_dim(_default_positions(positions, b, t),
                                             start, w, axis=1)
    mask = None
    if segment_ids is not None:
      q_seg = jax.lax.dynamic_slice_in_dim(segment_ids, start, w, axis=1)
      mask = (q_seg[:, :, None] == segment_ids[:, None, :])[:, None]
    x = constrain(self.embed(tokens), _ACT)
    new_k, new_v = [], []
    for i, block in enumerate(self.blocks):
      x, k, v = block.cached(x, mask, positions, ks[i], vs[i], start)
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


def abstract_params(cfg: ModelConfig) -> Params:
  """`jax.ShapeDtypeStruct` tree of the parameters (no allocation)."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def forward(params: Params, tokens: jax.Array, segment_ids: jax.Array | None = None,
            positions: jax.Array | None = None, *, config: ModelConfig,
            output_window: tuple[jax.Array, int] | None = None,
            kv_lengths: jax.Array | None = None) -> jax.Array:
  """Pure forward pass.

  Args:
    params: parameters from `init_params` (or a checkpoint).
    tokens: int [B, L].
    segment_ids: optional int [B, L]; a position attends only to positions with the
      same id (packed documents; 0 is used for padding).
    positions: optional int [B, L] RoPE positions (default 0..L-1).
    config: the model config (static).
    output_window: optional (start, length), length static: the output head runs
      only on positions [start, start + length) (all positions are still attended).
    kv_lengths: optional int [B]: row i attends only to its first kv_lengths[i]
      positions (a truncation expressed without a mask, so attention keeps its
      unmasked fast path, e.g. cuDNN's; positions beyond give unused outputs).

  Returns:
    logits [B, L, V] (or [B, length, V]) in the compute dtype.
  """
  return nnx.merge(graphdef(config), params)(tokens, segment_ids, positions,
                                             output_window, kv_lengths)


def forward_with_cache(params: Params, tokens: jax.Array,
                       segment_ids: jax.Array | None = None,
                       positions: jax.Array | None = None, *, config: ModelConfig,
                       output_window: tuple[jax.Array, int]):
  """Full forward that also returns the KV cache of the canvas.

  Returns (logits [B, length, V] of `output_window`, (keys, values) each
  [n_layers, B, T, H, Dh])."""
  m = nnx.merge(graphdef(config), params)
  h, ks, vs = m.hidden_with_kv(tokens, segment_ids, positions)
  return m.head(h, output_window), (ks, vs)


def forward_window(params: Params, tokens: jax.Array, start: jax.Array | int,
                   cache: tuple[jax.Array, jax.Array],
                   segment_ids: jax.Array | None = None,
                   positions: jax.Array | None = None, *, config: ModelConfig,
                   output_length: int):
  """Forward of a window of the canvas against a KV cache (block KV caching).

  Args:
    tokens: int [B, W], the canvas positions [start, start + W).
    start: where the window starts.
    cache: (keys, values) [n_layers, B, T, H, Dh] of the whole canvas, e.g. from
      `forward_with_cache`; the window's fresh keys/values replace its part.
    segment_ids, positions: of the whole canvas [B, T], or None.
    output_length: the head runs on the window's first `output_length` rows.

  Returns:
    (logits [B, output_length, V], updated cache).
  """
  m = nnx.merge(graphdef(config), params)
  h, ks, vs = m.hidden_window(tokens, start, segment_ids, positions, *cache)
  return m.head(h, (0, output_length)), (ks, vs)
