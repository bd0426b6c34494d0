"""Likelihood evaluation: LLaDA's lower-variance Monte Carlo ELBO (and, for a
checkpoint trained with the block objective, the block NELBO of
block_likelihood.py: pass its `block_size`).

For an answer of length L (after a prompt that is never masked): draw k in
{1..L}; row j of a batch of b masks exactly l_j = round(k + j L / b), wrapped into
[1, L], answer tokens chosen uniformly at random; the row's estimate is
sum over masked positions of CE * L / l_j. The mean over rows and batches
estimates -ELBO >= -log p(answer | prompt); its negative is the log-likelihood
(a lower bound). With cfg_scale > 0 the logits are guided as in sampling (the
unconditional pass masks the prompt).

Sequences are padded to a fixed length (padding in its own segment, never
attended by real tokens, never masked) so every length in a bucket shares one
compiled function.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dllm_jax import models
from dllm_jax.evaluation import block_likelihood
from dllm_jax.models import ModelConfig
from dllm_jax.sampling.generate import bucket_length


def mask_counts(key: jax.Array, answer_len: jax.Array, batch_size: int) -> jax.Array:
  """l_j = ((round(k + j L / b) - 1) mod L) + 1 for j < b, k ~ U{1..L}. -> int [b]."""
  k = jax.random.randint(key, (), 1, answer_len + 1)
  frac = jnp.arange(batch_size) * (answer_len / batch_size)
  x = jnp.round(k + frac).astype(jnp.int32)  # Round half to even, as torch.round.
  return (x - 1) % answer_len + 1


def answer_masks(key: jax.Array, counts: jax.Array, answer_start: jax.Array,
                 answer_len: jax.Array, length: int) -> jax.Array:
  """bool [b, length]: row j masks `counts[j]` answer positions chosen uniformly."""
  b = counts.shape[0]
  pos = jnp.arange(length)
  in_answer = (pos >= answer_start) & (pos < answer_start + answer_len)
  scores = jnp.where(in_answer, jax.random.uniform(key, (b, length)), 2.0)
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)  # Answer positions first.
  return rank < counts[:, None]


def check_block_options(block_size: int | None, cfg_scale: float) -> None:
  if block_size and cfg_scale:
    raise ValueError(f'cfg_scale={cfg_scale}: a block-diffusion checkpoint\'s block '
                     'likelihood has no classifier-free guidance (use cfg_scale=0).')


@functools.partial(jax.jit, static_argnames=('config', 'mc_num', 'batch_size',
                                             'cfg_scale', 'block_size'))
def negative_elbo(params: models.Params, tokens: jax.Array, answer_start: jax.Array,
                  answer_len: jax.Array, key: jax.Array, *, config: ModelConfig,
                  mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                  segment_ids: jax.Array | None = None,
                  positions: jax.Array | None = None,
                  block_size: int | None = None) -> jax.Array:
  """Monte Carlo -ELBO of tokens[answer_start : answer_start + answer_len]
  (with `block_size`: the block NELBO of a checkpoint trained with the block
  objective, block_likelihood.py).

  Args:
    tokens: int [T]: prompt, answer, then padding (anything; never attended).
    answer_start, answer_len: int scalars; answer_len >= 1.
    mc_num: Monte Carlo samples (a multiple of batch_size).
    cfg_scale: classifier-free guidance scale (0: none; static).
    segment_ids, positions: optional int [T] for packed rows (default: one
      segment over prompt and answer, 0 on padding; positions 0..T-1).
    block_size: the block size a block-diffusion checkpoint was trained with
      (static; None: masked diffusion, the bidirectional ELBO).

  Returns:
    float32 scalar, in nats (divide by answer_len for per token).
  """
  check_block_options(block_size, cfg_scale)
  if block_size:
    return block_likelihood.negative_block_elbo(
        params, tokens, answer_start, answer_len, key, config=config,
        block_size=block_size, mc_num=mc_num, batch_size=batch_size,
        segment_ids=segment_ids, positions=positions)
  if mc_num % batch_size:
    raise ValueError(f'mc_num={mc_num} is not a multiple of batch_size={batch_size}.')
  t = tokens.shape[0]
  pos = jnp.arange(t)
  if segment_ids is None:
    segment_ids = (pos < answer_start + answer_len).astype(jnp.int32)
  seg = jnp.broadcast_to(segment_ids, (batch_size, t))
  positions = jnp.broadcast_to(pos if positions is None else positions, (batch_size, t))
  seq = jnp.broadcast_to(tokens, (batch_size, t))
  prompt = pos < answer_start

  def one_batch(total, key):
    kc, km = jax.random.split(key)
    counts = mask_counts(kc, answer_len, batch_size)
    masked = answer_masks(km, counts, answer_start, answer_len, t)
    noisy = jnp.where(masked, config.ids.mask, seq)
    logits = models.forward(params, noisy, seg, positions,
                            config=config).astype(jnp.float32)
    if cfg_scale != 0:
      un = jnp.where(prompt, config.ids.mask, noisy)
      un_logits = models.forward(params, un, seg, positions,
                                 config=config).astype(jnp.float32)
      logits = un_logits + (cfg_scale + 1.0) * (logits - un_logits)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, seq)
    weight = answer_len / counts.astype(jnp.float32)
    return total + jnp.sum(jnp.where(masked, ce, 0.0) * weight[:, None]) / batch_size, None

  total, _ = jax.lax.scan(one_batch, jnp.zeros((), jnp.float32),
                          jax.random.split(key, mc_num // batch_size))
  return total / (mc_num // batch_size)


def log_likelihood(params: models.Params, prompt: Sequence[int], answer: Sequence[int],
                   key: jax.Array, *, config: ModelConfig, mc_num: int = 128,
                   batch_size: int = 16, cfg_scale: float = 0.0,
                   block_size: int | None = None) -> float:
  """ELBO lower bound of log p(answer | prompt), in nats (LLaDA's estimator;
  with `block_size`, the block NELBO a block-diffusion checkpoint was trained
  on: block_likelihood.py)."""
  check_block_options(block_size, cfg_scale)
  if len(answer) == 0:
    raise ValueError('the answer is empty.')
  n = len(prompt) + len(answer)
  if n > config.max_len:
    raise ValueError(f'prompt + answer = {n} tokens exceeds the model max_len '
                     f'{config.max_len}.')
  # Padded to a multiple of 32 tokens (one bucket: one compilation per 32 lengths).
  tokens = np.full(bucket_length(n, (32,), config.max_len), config.ids.pad, np.int32)
  tokens[:n] = np.concatenate([np.asarray(prompt, np.int32),
                               np.asarray(answer, np.int32)])
  if np.any(tokens[:n] == config.ids.mask):
    raise ValueError(f'the text contains the mask token (id {config.ids.mask}).')
  return -float(negative_elbo(params, jnp.asarray(tokens), jnp.asarray(len(prompt)),
                              jnp.asarray(len(answer)), key, config=config,
                              mc_num=mc_num, batch_size=batch_size,
                              cfg_scale=cfg_scale, block_size=block_size))
