"""The model calls every other module uses, for a config of any family.

Each call finds the config's family (`registry.of(config)`) and runs it. Attention
is an `attention.AttentionSpec` (`attention=`); the older keyword form
(`segment_ids`, `kv_lengths`) builds one. Without either, attention is
bidirectional, or causal for a causal config (the autoregressive twin).

  params = init_params(config, key)                  # nested dict of arrays
  logits = forward(params, tokens, config=config, attention=spec)
"""

from __future__ import annotations

import jax

from dllm_jax.models import registry
from dllm_jax.models.attention import AttentionSpec
from dllm_jax.models.base import Params

__all__ = ['Params', 'init_params', 'abstract_params', 'forward',
           'forward_with_cache', 'forward_window', 'default_attention']


def default_attention(config, segment_ids: jax.Array | None = None,
                      kv_lengths: jax.Array | None = None) -> AttentionSpec:
  """The spec of a plain call: segments and key lengths as given, causal iff the
  config is (the autoregressive twin)."""
  return AttentionSpec(segment_ids=segment_ids, kv_lengths=kv_lengths,
                       causal=bool(getattr(config, 'causal', False)))


def _spec(config, attention, segment_ids, kv_lengths) -> AttentionSpec:
  if attention is None:
    return default_attention(config, segment_ids, kv_lengths)
  if segment_ids is not None or kv_lengths is not None:
    raise ValueError('give attention= or segment_ids/kv_lengths, not both.')
  return attention


def init_params(config, key: jax.Array) -> Params:
  """Random parameters as a nested dict of arrays (jit it to init in place)."""
  return registry.of(config).init_params(config, key)


def abstract_params(config) -> Params:
  """`jax.ShapeDtypeStruct` tree of the parameters (no allocation)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def forward(params: Params, tokens: jax.Array, segment_ids: jax.Array | None = None,
            positions: jax.Array | None = None, *, config,
            output_window: tuple[jax.Array, int] | None = None,
            kv_lengths: jax.Array | None = None,
            attention: AttentionSpec | None = None) -> jax.Array:
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
    attention: the whole attention rule instead of segment_ids / kv_lengths.

  Returns:
    logits [B, L, V] (or [B, length, V]) in the compute dtype.
  """
  spec = _spec(config, attention, segment_ids, kv_lengths)
  return registry.of(config).forward(params, tokens, spec, positions, config=config,
                                     output_window=output_window)


def forward_with_cache(params: Params, tokens: jax.Array,
                       segment_ids: jax.Array | None = None,
                       positions: jax.Array | None = None, *, config,
                       output_window: tuple[jax.Array, int],
                       attention: AttentionSpec | None = None):
  """Full forward that also returns the KV cache of the canvas.

  Returns (logits [B, length, V] of `output_window`, the family's cache; for
  `llada`, (keys, values) each [n_layers, B, T, H, Dh])."""
  spec = _spec(config, attention, segment_ids, None)
  return registry.of(config).prefill(params, tokens, spec, positions, config=config,
                                     output_window=output_window)


def forward_window(params: Params, tokens: jax.Array, start: jax.Array | int,
                   cache, segment_ids: jax.Array | None = None,
                   positions: jax.Array | None = None, *, config,
                   output_length: int, attention: AttentionSpec | None = None):
  """Forward of a window of the canvas against a KV cache (block KV caching).

  Args:
    tokens: int [B, W], the canvas positions [start, start + W).
    start: where the window starts.
    cache: the family's cache of the whole canvas, e.g. from
      `forward_with_cache`; the window's fresh keys/values replace its part.
    segment_ids, positions: of the whole canvas [B, T], or None.
    output_length: the head runs on the window's first `output_length` rows.
    attention: the canvas's attention rule (its arrays [B, T]) instead of
      segment_ids; the window's queries are rows [start, start + W) of it.

  Returns:
    (logits [B, output_length, V], updated cache).
  """
  spec = _spec(config, attention, segment_ids, None)
  return registry.of(config).window(params, tokens, start, cache, spec, positions,
                                    config=config, output_length=output_length)


def attention_impl(config) -> str:
  """The attention kernel a config runs with (`attention.choose_implementation`)."""
  from dllm_jax.models import attention  # pylint: disable=g-import-not-at-top
  return attention.choose_implementation(config.attention_impl, config.dtype,
                                         config.head_dim)
