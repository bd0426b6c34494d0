"""The forward (masking) process and the LLaDA training losses.

Every loss here is `sum(CE * weight over selected positions) / denom`; the
objectives differ only in which positions are selected and how they are weighted:

  pretraining  t ~ U(0,1), p = (1-eps) t + eps, mask each token w.p. p,
               weight 1/p, denom = B * L  (1% of batches: random length in [1, L])
  SFT          as pretraining, but prompt tokens are never masked,
               weight 1/(p * answer_length_i), denom = B
  next-token   (the autoregressive twin) predict token i+1 at i within a document,
               weight 1, denom = number of predicted tokens

The `*_batch` functions build a `LossBatch` (model inputs, attention rule,
targets, weights) from a data batch and the noise; `loss_from_logits` finishes
the job once the model has run on `LossBatch.inputs` under
`LossBatch.attention`. `registry.py` names them for the trainer.
"""

from __future__ import annotations

from typing import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dllm_jax.models.attention import AttentionSpec, causal

EPS = 1e-3
RANDOM_LENGTH_PROB = 0.01


@flax.struct.dataclass
class MaskNoise:
  """The random draws of the forward process for one batch."""

  t: jax.Array  # [B] float, U(0, 1).
  u: jax.Array  # [B, L] float, U(0, 1); token masked iff u < p.
  length: jax.Array  # [] int, the (possibly random) sequence length kept.


@flax.struct.dataclass
class LossBatch:
  """Model inputs plus what the loss needs; every field has leading dim B."""

  inputs: jax.Array  # [B, L] int, tokens with masks applied.
  attention: AttentionSpec  # Who attends to whom (its arrays [B, L] / [B]).
  positions: jax.Array | None  # [B, L] int, or None: 0..L-1.
  targets: jax.Array  # [B, L] int.
  weights: jax.Array  # [B, L] float; 0 where no loss is taken.
  denom: jax.Array  # [] float, shared by the whole batch.


def sample_noise(key: jax.Array, shape: tuple[int, int],
                 random_length_prob: float = RANDOM_LENGTH_PROB,
                 stratified_t: bool = False) -> MaskNoise:
  """Draws t [B], u [B, L] and the kept length for a batch of `shape` = (B, L).

  `stratified_t`: t_i = (s + i / B) mod 1 with one s ~ U(0, 1). Every t_i is still
  U(0, 1), so the loss keeps its expectation; the batch covers the mask ratios
  evenly, which lowers the variance of the 1/p-weighted loss (as in MDLM/VDM).
  """
  b, l = shape
  kt, ku, kr, kl = jax.random.split(key, 4)
  use_random = jax.random.uniform(kr) < random_length_prob
  random_len = jax.random.randint(kl, (), 1, l + 1)
  if stratified_t:
    t = jnp.mod(jax.random.uniform(kt) + jnp.arange(b) / b, 1.0)
  else:
    t = jax.random.uniform(kt, (b,))
  return MaskNoise(t=t,
                   u=jax.random.uniform(ku, (b, l)),
                   length=jnp.where(use_random, random_len, l).astype(jnp.int32))


def mask_probability(t: jax.Array, eps: float = EPS) -> jax.Array:
  """p = (1 - eps) t + eps."""
  return (1.0 - eps) * t + eps


def pretrain_batch(batch: Mapping[str, jax.Array], noise: MaskNoise, *,
                   mask_id: int, eps: float = EPS,
                   attention: AttentionSpec | None = None) -> LossBatch:
  """LLaDA pretraining: mask w.p. p, weight 1/p, divide by B * length.

  `batch` has `tokens` [B, L] and optionally `segment_ids` (0 = padding, never
  masked) and `positions`. `attention` is the objective's rule (default:
  bidirectional within the batch's segments). Positions at or beyond
  `noise.length` are cut off and take no loss, which equals truncating the batch
  to `noise.length` tokens: with segment ids they get their own segment (no kept
  token attends to them); without, the cut is `kv_lengths` (keys beyond it are
  never attended), so attention runs with no mask at all, on its fastest path.
  """
  tokens = batch['tokens']
  b, l = tokens.shape
  kept = jnp.arange(l) < noise.length
  p = mask_probability(noise.t, eps)[:, None]
  spec = (AttentionSpec(segment_ids=batch.get('segment_ids')) if attention is None
          else attention)
  seg = spec.segment_ids
  if seg is None:
    masked = (noise.u < p) & kept
    spec = spec.replace(kv_lengths=jnp.full((b,), noise.length, jnp.int32))
  else:
    seg = jnp.where(kept, seg, -1)
    masked = (noise.u < p) & kept & (seg != 0)
    spec = spec.replace(segment_ids=seg)
  return LossBatch(
      inputs=jnp.where(masked, mask_id, tokens), attention=spec,
      positions=batch.get('positions'), targets=tokens,
      weights=jnp.where(masked, 1.0 / p, 0.0),
      denom=(b * noise.length).astype(jnp.float32))


def sft_batch(batch: Mapping[str, jax.Array], noise: MaskNoise, *, mask_id: int,
              eps: float = EPS, attention: AttentionSpec | None = None) -> LossBatch:
  """LLaDA SFT: the prompt (`prompt_lengths` [B]) is never masked; the answer,
  EOS padding included, is masked w.p. p and weighted 1/(p * answer_length)."""
  tokens = batch['tokens']
  b, l = tokens.shape
  prompt_len = batch['prompt_lengths'][:, None]
  is_answer = jnp.arange(l)[None, :] >= prompt_len
  answer_len = jnp.maximum(l - prompt_len, 1).astype(jnp.float32)
  p = mask_probability(noise.t, eps)[:, None]
  masked = (noise.u < p) & is_answer
  return LossBatch(
      inputs=jnp.where(masked, mask_id, tokens),
      attention=(AttentionSpec(segment_ids=batch.get('segment_ids'))
                 if attention is None else attention),
      positions=batch.get('positions'), targets=tokens,
      weights=jnp.where(masked, 1.0 / (p * answer_len), 0.0),
      denom=jnp.asarray(b, jnp.float32))


def next_token_batch(batch: Mapping[str, jax.Array],
                     attention: AttentionSpec | None = None) -> LossBatch:
  """Autoregressive twin: predict tokens[i+1] at i when both are in one document
  (causal attention within documents)."""
  tokens, seg = batch['tokens'], batch.get('segment_ids')
  seg = jnp.ones(tokens.shape, jnp.int32) if seg is None else seg
  targets = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)
  next_seg = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, -1:])], axis=1)
  valid = (next_seg == seg) & (seg != 0)
  if attention is None:
    attention = causal(segment_ids=batch.get('segment_ids'))
  return LossBatch(inputs=tokens, attention=attention,
                   positions=batch.get('positions'), targets=targets,
                   weights=valid.astype(jnp.float32),
                   denom=jnp.maximum(valid.sum(), 1).astype(jnp.float32))


def loss_from_logits(logits: jax.Array, lb: LossBatch) -> jax.Array:
  """sum(CE(logits, targets) * weights) / denom, CE in float32. logits [B, L, V]."""
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), lb.targets)
  return jnp.sum(ce * lb.weights) / lb.denom
