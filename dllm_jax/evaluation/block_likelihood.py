"""Likelihood of a block-diffusion checkpoint: the block NELBO it was trained on.

A model trained with the block objective (objectives/block.py) predicts block k
from a noisy copy of block k and the CLEAN blocks before it (BD3-LM's
factorisation, block-causal; LLaDA2's training), so its bound on
-log p(answer | prompt) is the sum over blocks of each block's masked-diffusion
NELBO given the clean earlier blocks, not the bidirectional ELBO of
likelihood.py. One forward of [x_t, x_0] under objectives.block.block_mask
computes every block's term at once (the noisy copy of block k sees its own
block and clean blocks < k, exactly what the block sampler's cache sees).

Estimator (LLaDA's lower-variance one, per block): a block g holding n_g answer
tokens draws k_g ~ U{1..n_g}; row j of a batch of b masks exactly
l_gj = ((round(k_g + j n_g / b) - 1) mod n_g) + 1 of them, chosen uniformly, and
weights each masked token's cross entropy by n_g / l_gj. For each block this is
an unbiased estimate of BD3-LM's (1/t)-weighted NELBO of that block (the count
form of the same integral over t); the row's estimate sums the blocks. Blocks
count from each document's position 0 (as in training and sampling), the
prompt is never masked, padding (segment 0) is never attended nor masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from dllm_jax import models
from dllm_jax.models.attention import AttentionSpec
from dllm_jax.objectives.block import block_mask


def block_ids(positions: jax.Array, segment_ids: jax.Array, block_size: int) -> jax.Array:
  """int [T]: each token's block, numbered 0, 1, ... along the row (a block is
  a run of one document's positions with the same position // block_size)."""
  blk = positions // block_size
  new = jnp.concatenate([jnp.ones((1,), bool), (blk[1:] != blk[:-1]) |
                         (segment_ids[1:] != segment_ids[:-1])])
  return jnp.cumsum(new) - 1


def draw_masks(key: jax.Array, groups: jax.Array, maskable: jax.Array,
               batch_size: int) -> tuple[jax.Array, jax.Array]:
  """(masked bool [b, T], weight float32 [b, T]) of one Monte Carlo batch
  (module doc): groups int [T] from `block_ids`, maskable bool [T]."""
  t = groups.shape[0]
  n = jax.ops.segment_sum(maskable.astype(jnp.int32), groups, num_segments=t)  # [G]
  size = jax.ops.segment_sum(jnp.ones((t,), jnp.int32), groups, num_segments=t)
  start = jnp.cumsum(size) - size
  kc, km = jax.random.split(key)
  n_safe = jnp.maximum(n, 1)
  k = jnp.floor(jax.random.uniform(kc, (t,)) * n_safe).astype(jnp.int32) + 1
  frac = jnp.arange(batch_size)[:, None] * (n_safe / batch_size)
  counts = (jnp.round(k + frac).astype(jnp.int32) - 1) % n_safe + 1  # [b, G]
  scores = jnp.where(maskable, jax.random.uniform(km, (batch_size, t)), 2.0)
  order = jax.vmap(lambda s: jnp.lexsort((s, groups)))(scores)  # Group, then score.
  rank = jnp.argsort(order, axis=1)  # Position -> its place in that order.
  in_group = rank - start[groups]
  l_tok = counts[:, groups]
  masked = maskable & (in_group < l_tok)
  return masked, jnp.where(masked, n_safe[groups] / l_tok, 0.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=('config', 'block_size', 'mc_num',
                                             'batch_size'))
def negative_block_elbo(params: models.Params, tokens: jax.Array,
                        answer_start: jax.Array, answer_len: jax.Array, key: jax.Array,
                        *, config, block_size: int, mc_num: int = 128,
                        batch_size: int = 16, segment_ids: jax.Array | None = None,
                        positions: jax.Array | None = None) -> jax.Array:
  """Monte Carlo block NELBO of tokens[answer_start : answer_start + answer_len]
  (module doc), in nats; arguments as `likelihood.negative_elbo`'s."""
  if mc_num % batch_size:
    raise ValueError(f'mc_num={mc_num} is not a multiple of batch_size={batch_size}.')
  t = tokens.shape[0]
  pos = jnp.arange(t)
  if segment_ids is None:
    segment_ids = (pos < answer_start + answer_len).astype(jnp.int32)
  if positions is None:
    positions = pos
  maskable = (pos >= answer_start) & (pos < answer_start + answer_len) & (segment_ids != 0)
  groups = block_ids(positions, segment_ids, block_size)
  rows = lambda x: jnp.broadcast_to(x, (batch_size, t))
  seq, seg, rpos = rows(tokens), rows(segment_ids), rows(positions)
  spec = AttentionSpec(mask=block_mask(rpos, block_size, seg))
  both_pos = jnp.concatenate([rpos, rpos], axis=1)

  def one_batch(total, key):
    masked, weight = draw_masks(key, groups, maskable, batch_size)
    noisy = jnp.where(masked, config.ids.mask, seq)
    logits = models.forward(params, jnp.concatenate([noisy, seq], axis=1),
                            positions=both_pos, config=config, attention=spec,
                            output_window=(0, t)).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, seq)
    return total + jnp.sum(ce * weight) / batch_size, None

  total, _ = jax.lax.scan(one_batch, jnp.zeros((), jnp.float32),
                          jax.random.split(key, mc_num // batch_size))
  return total / (mc_num // batch_size)
