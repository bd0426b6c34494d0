"""Greedy decoding for the autoregressive twin (`causal=True`), without a cache.

Each new token reruns the forward over the fixed canvas (prompt + gen_length);
the output head runs on one position. The KV-cached decoder is a later step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dllm_jax import model as model_lib
from dllm_jax.presets import ModelConfig


@functools.partial(jax.jit, static_argnames=('config', 'gen_length'))
def _greedy(params, prompt, *, config: ModelConfig, gen_length: int):
  b, p = prompt.shape
  canvas = jnp.concatenate(
      [prompt.astype(jnp.int32), jnp.full((b, gen_length), config.pad_id, jnp.int32)], 1)

  def body(i, canvas):
    logits = model_lib.forward(params, canvas, config=config,
                               output_window=(p + i - 1, 1))
    logits = logits[:, 0].astype(jnp.float32).at[:, config.mask_id].set(-jnp.inf)
    return canvas.at[:, p + i].set(jnp.argmax(logits, -1).astype(jnp.int32))

  return jax.lax.fori_loop(0, gen_length, body, canvas)


def greedy(params: model_lib.Params, prompt, *, config: ModelConfig,
           gen_length: int) -> jax.Array:
  """prompt int [B, P] -> [B, P + gen_length], each new token the argmax."""
  if not config.causal:
    raise ValueError('greedy autoregressive decoding needs a causal model '
                     '(train.objective=next_token).')
  if prompt.shape[1] + gen_length > config.max_len:
    raise ValueError(f'prompt length {prompt.shape[1]} + gen_length {gen_length} '
                     f'exceeds the model max_len {config.max_len}.')
  return _greedy(params, jnp.asarray(prompt), config=config, gen_length=gen_length)
