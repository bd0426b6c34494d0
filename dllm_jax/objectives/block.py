"""Block diffusion training (LLaDA2 / BD3-LM): the noisy and the clean copy side by side.

A row x_0 of length L becomes the model input [x_t, x_0] (length 2L) with
positions [pos, pos] (restarting for each copy) and one explicit attention mask
over the 2L positions; with b(i) = position(i) // block_size:

  x_t -> x_t   same block (bidirectional inside the block)
  x_t -> x_0   earlier blocks only: b(i) > b(j)
  x_0 -> x_0   block-causal: b(i) >= b(j)
  x_0 -> x_t   never

and, in packed rows, only keys of the query's own document. The loss is the
cross entropy of the x_t copy's logits at its masked positions (same-position
labels). Noise: one t per row in [t_min, t_max] (LLaDA2, default [0.3, 0.8]) or
one t per block in [eps, 1] (BD3-LM); weight 1 divided by the number of masked
tokens (LLaDA2) or 1/t divided by the number of maskable tokens (BD3-LM).
Padding (segment 0) and SFT prompts are never masked. Blocks count from each
document's position 0, as the block sampler (`sampling/block.py`) aligns them.

  opts = BlockDiffusionOptions(block_size=32)
  lb = make_loss_batch(batch, key, step, mask_id=cfg.ids.mask, options=opts)
  logits = model.forward(params, lb.inputs, positions=lb.positions,
                         config=cfg, attention=lb.attention)
  loss = masked.loss_from_logits(logits, lb)
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from dllm_jax.kernels import block_sparse
from dllm_jax.models.attention import AttentionSpec
from dllm_jax.objectives import masked

NOISES = ('row', 'block')
WEIGHTS = ('none', 'inv_t')


@dataclasses.dataclass(frozen=True)
class BlockDiffusionOptions:
  """The knobs the references differ on (hashable: static under jit).

  block_size: tokens per block (the final size when growing).
  noise: 'row' one t ~ U[t_min, t_max] per row (LLaDA2); 'block' one t ~
    U[eps, 1] per block (BD3-LM).
  weight: 'none' (sum CE / #masked, LLaDA2) or 'inv_t' (sum CE / t / #maskable,
    BD3-LM's SUBS ELBO).
  grow_every: > 0 grows the block size on a schedule: grow_from, doubled every
    grow_every steps, capped at block_size (LLaDA2's warm-up 1 -> 4 -> 32).
  skip_tiles: attention computes only the (query tile, key tile) pairs of
    block_size the mask can allow (`block_sparse`; the union over a growing
    schedule's sizes), not the dense 2L x 2L scores; same loss and gradients.
  """

  block_size: int = 32
  noise: str = 'row'
  t_min: float = 0.3
  t_max: float = 0.8
  eps: float = 1e-3
  weight: str = 'none'
  grow_every: int = 0
  grow_from: int = 1
  skip_tiles: bool = False

  def sizes(self) -> list[int]:
    """Every block size the schedule uses, smallest first."""
    if self.grow_every <= 0:
      return [self.block_size]
    out, b = [], self.grow_from
    while b < self.block_size:
      out.append(b)
      b *= 2
    return out + [self.block_size]

  def validate(self, seq_len: int | None = None) -> None:
    """One-line ValueErrors for settings that cannot work."""
    if self.block_size <= 0:
      raise ValueError(f'block_size must be positive, got {self.block_size}.')
    if self.noise not in NOISES:
      raise ValueError(f'unknown block noise {self.noise!r}; known: {NOISES}.')
    if self.weight not in WEIGHTS:
      raise ValueError(f'unknown block loss weight {self.weight!r}; known: {WEIGHTS}.')
    if not 0.0 <= self.t_min <= self.t_max <= 1.0:
      raise ValueError(f'need 0 <= t_min <= t_max <= 1, got [{self.t_min}, '
                       f'{self.t_max}].')
    if not 0.0 < self.eps < 1.0:
      raise ValueError(f'eps must be in (0, 1), got {self.eps}.')
    if self.grow_every > 0 and self.grow_from <= 0:
      raise ValueError(f'grow_from must be positive, got {self.grow_from}.')
    if seq_len is not None:
      for b in self.sizes():
        if seq_len % b:
          raise ValueError(f'block size {b} does not divide the row length '
                           f'{seq_len}; use a block size that divides it.')

  def block_size_at(self, step: jax.Array | int) -> jax.Array:
    """The block size at a training step (traced: no recompile as it grows)."""
    if self.grow_every <= 0:
      return jnp.asarray(self.block_size, jnp.int32)
    doublings = jnp.asarray(step, jnp.int32) // self.grow_every
    most = len(self.sizes()) - 1  # Capped before the shift can overflow.
    grown = self.grow_from * jnp.left_shift(1, jnp.minimum(doublings, most))
    return jnp.minimum(grown, self.block_size).astype(jnp.int32)


def block_mask(positions: jax.Array, block_size: jax.Array | int,
               segment_ids: jax.Array | None = None) -> jax.Array:
  """The three-part mask of [x_t, x_0]: bool [B, 1, 2L, 2L].

  positions: int [B, L] (block index = position // block_size); segment_ids:
  int [B, L] or None (one document per row).
  """
  blk = positions // block_size
  bq, bk = blk[:, :, None], blk[:, None, :]
  noisy_noisy = bq == bk
  noisy_clean = bq > bk
  clean_clean = bq >= bk
  never = jnp.zeros_like(noisy_noisy)
  top = jnp.concatenate([noisy_noisy, noisy_clean], axis=2)
  bottom = jnp.concatenate([never, clean_clean], axis=2)
  mask = jnp.concatenate([top, bottom], axis=1)
  if segment_ids is not None:
    seg = jnp.concatenate([segment_ids, segment_ids], axis=1)
    mask &= seg[:, :, None] == seg[:, None, :]
  return mask[:, None]


def noise_levels(key: jax.Array, positions: jax.Array, block_size: jax.Array | int,
                 options: BlockDiffusionOptions) -> jax.Array:
  """The noise level t of every token [B, L] (one per row, or one per block:
  block k of every document in a row shares one draw). `make_loss_batch` uses
  the first half of `jax.random.split(key)`."""
  b, l = positions.shape
  if options.noise == 'row':
    t = jax.random.uniform(key, (b, 1), minval=options.t_min, maxval=options.t_max)
    return jnp.broadcast_to(t, (b, l))
  # One level per block: at most L blocks per row (block size >= 1).
  t_blocks = jax.random.uniform(key, (b, l), minval=options.eps, maxval=1.0)
  return jnp.take_along_axis(t_blocks, positions // block_size, axis=1)


def make_loss_batch(batch: Mapping[str, jax.Array], key: jax.Array,
                    step: jax.Array | int = 0, *, mask_id: int,
                    options: BlockDiffusionOptions) -> masked.LossBatch:
  """A block-diffusion `LossBatch` (inputs [B, 2L]) from a data batch.

  `batch` has `tokens` [B, L] and optionally `segment_ids` (0 = padding, never
  masked), `positions` (restarting per document) and `prompt_lengths` [B] (SFT:
  the prompt is never masked). The targets and weights cover both copies; the
  clean copy's weights are 0.
  """
  tokens = batch['tokens']
  b, l = tokens.shape
  seg = batch.get('segment_ids')
  pos = batch.get('positions')
  if pos is None:
    pos = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  block_size = options.block_size_at(step)
  kt, ku = jax.random.split(key)
  t = noise_levels(kt, pos, block_size, options)
  maskable = jnp.ones((b, l), bool)
  if seg is not None:
    maskable &= seg != 0
  if 'prompt_lengths' in batch:
    maskable &= jnp.arange(l)[None, :] >= batch['prompt_lengths'][:, None]
  masked = (jax.random.uniform(ku, (b, l)) < t) & maskable
  if options.weight == 'none':
    w = masked.astype(jnp.float32)
    denom = jnp.maximum(masked.sum(), 1).astype(jnp.float32)
  else:
    w = jnp.where(masked, 1.0 / t, 0.0)
    denom = jnp.maximum(maskable.sum(), 1).astype(jnp.float32)
  zeros = jnp.zeros_like(w)
  tiles = None
  if options.skip_tiles:  # Static: blocks restart per document when positions are given.
    tiles = block_sparse.TileLayout(l, tuple(options.sizes()), options.block_size,
                                    packed=batch.get('positions') is not None)
  return as_loss_batch(
      inputs=jnp.concatenate([jnp.where(masked, mask_id, tokens), tokens], axis=1),
      positions=jnp.concatenate([pos, pos], axis=1),
      targets=jnp.concatenate([tokens, tokens], axis=1),
      weights=jnp.concatenate([w, zeros], axis=1), denom=denom,
      attention=AttentionSpec(mask=block_mask(pos, block_size, seg), tiles=tiles))


def as_loss_batch(*, inputs, positions, targets, weights, denom,
                  attention: AttentionSpec) -> masked.LossBatch:
  """The adapter to `diffusion.LossBatch`: its `attention` field carries the spec
  (no segment ids: the documents are inside the explicit mask)."""
  if 'attention' not in {f.name for f in dataclasses.fields(masked.LossBatch)}:
    raise ValueError('masked.LossBatch has no attention field; block diffusion '
                     'needs it to carry its mask.')
  return masked.LossBatch(inputs=inputs, positions=positions, targets=targets,
                             weights=weights, denom=denom, attention=attention)

