"""Greedy decoding for the autoregressive twin (`causal=True`).

`greedy(..., cache=True)` (the default) prefills the prompt once and then runs
one position per token against a KV cache of the canvas; `cache=False` reruns
the forward over the whole canvas (prompt + gen_length) for every token (the
reference the cached decoder is tested against).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dllm_jax import models
from dllm_jax.models import attention


@functools.partial(jax.jit, static_argnames=('config', 'gen_length'))
def _greedy(params, prompt, *, config, gen_length: int):
  b, p = prompt.shape
  canvas = jnp.concatenate(
      [prompt.astype(jnp.int32), jnp.full((b, gen_length), config.ids.pad, jnp.int32)], 1)

  def body(i, canvas):
    logits = models.forward(params, canvas, config=config,
                            output_window=(p + i - 1, 1),
                            attention=attention.causal())
    logits = logits[:, 0].astype(jnp.float32).at[:, config.ids.mask].set(-jnp.inf)
    return canvas.at[:, p + i].set(jnp.argmax(logits, -1).astype(jnp.int32))

  return jax.lax.fori_loop(0, gen_length, body, canvas)


@functools.partial(jax.jit, static_argnames=('config', 'gen_length'))
def _greedy_cached(params, prompt, *, config, gen_length: int):
  b, p = prompt.shape
  canvas = jnp.concatenate(
      [prompt.astype(jnp.int32), jnp.full((b, gen_length), config.ids.pad, jnp.int32)], 1)

  def pick(logits):
    logits = logits[:, 0].astype(jnp.float32).at[:, config.ids.mask].set(-jnp.inf)
    return jnp.argmax(logits, -1).astype(jnp.int32)

  # Prefill: the causal forward over the canvas caches every position's keys
  # and values; only those of the prompt are used (the rest are masked below).
  logits, cache = models.forward_with_cache(params, canvas, config=config,
                                            output_window=(p - 1, 1),
                                            attention=attention.causal())
  canvas = canvas.at[:, p].set(pick(logits))

  def body(i, carry):
    canvas, cache = carry
    pos = p + i - 1  # The newest token; it attends to positions <= pos.
    token = jax.lax.dynamic_slice_in_dim(canvas, pos, 1, axis=1)
    logits, cache = models.forward_window(params, token, pos, cache,
                                          config=config, output_length=1,
                                          attention=attention.causal())
    return canvas.at[:, pos + 1].set(pick(logits)), cache

  canvas, _ = jax.lax.fori_loop(1, gen_length, body, (canvas, cache))
  return canvas


def greedy(params: models.Params, prompt, *, config,
           gen_length: int, cache: bool = True) -> jax.Array:
  """prompt int [B, P] -> [B, P + gen_length], each new token the argmax."""
  if not config.causal:
    raise ValueError('greedy autoregressive decoding needs a causal model '
                     '(train.objective=next_token).')
  if prompt.shape[1] + gen_length > config.max_len:
    raise ValueError(f'prompt length {prompt.shape[1]} + gen_length {gen_length} '
                     f'exceeds the model max_len {config.max_len}.')
  fn = _greedy_cached if cache else _greedy
  return fn(params, jnp.asarray(prompt), config=config, gen_length=gen_length)
