"""One denoising step's decisions: candidates, confidences and which to commit.

`candidates_and_confidence` is the pure-jnp reference of the per-step hot path
(a fused kernel may replace it; it must agree with this function; the
sampler reaches it through `proposers.py`). `select_top_k` is the LLaDA
selection: confidences and an eligibility mask -> the positions to commit (the
commit rule objects are in `rules.py`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

REMASKING = ('low_confidence', 'random')


def step_uniforms(key: jax.Array, shape: tuple[int, ...],
                  remasking: str, temperature: float | jax.Array,
                  noised: bool | None = None):
  """The uniforms one step consumes: (Gumbel u [B, T, V] or None,
  random-remasking u [B, T] or None). Exposed so references can replay them.
  Gumbel uniforms are drawn when `noised` (default: `temperature > 0`, which
  needs a Python float)."""
  kg, kr = jax.random.split(key)
  tiny = jnp.finfo(jnp.float32).tiny
  noised = temperature > 0 if noised is None else noised
  # Drawn flat and reshaped: the same numbers (threefry counts positions in
  # row-major order either way), and XLA on CPU compiles a flat draw several
  # times faster than a [B, L, V] one with a small V.
  flat = lambda k, s, **kw: jax.random.uniform(
      k, (math.prod(s),), jnp.float32, **kw).reshape(s)
  u_gumbel = flat(kg, shape, minval=tiny) if noised else None
  u_random = flat(kr, shape[:-1]) if remasking == 'random' else None
  return u_gumbel, u_random


NOISES = ('jax', 'counter')


def candidates_and_confidence(
    logits: jax.Array, key: jax.Array, *, temperature: float | jax.Array,
    remasking: str, mask_id: int, eos_id: int, eot_id: int,
    logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False,
    noise: str = 'jax', kernel_interpret: bool = False,
    noised: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """Candidate token and its confidence at every position.

  Args:
    logits: [B, T, V] (any float dtype; computed in float32).
    key: randomness for Gumbel noise and random remasking.
    temperature: 0 takes the plain argmax; > 0 the argmax of Gumbel-perturbed
      logits, equal to the reference's `argmax(exp(l) / (-log u) ** temperature)`,
      computed in log space as `l - temperature * log(-log u)`. A traced
      temperature needs `noised` (see `proposers`, which branch on it).
    noised: whether Gumbel noise is drawn; default `temperature > 0` (a Python
      float). False ignores `temperature` (the plain argmax).
    remasking: 'low_confidence' (softmax probability of the candidate under the
      un-noised logits) or 'random' (uniform).
    noise: 'jax' draws from `jax.random` (replayable by references); 'counter'
      hashes (seed, row, column) and runs the fused Pallas kernel where it
      compiles (GPU), its jnp twin elsewhere (`fused.py`); `kernel_interpret`
      runs the kernel in interpret mode (tests).
    mask_id: never a candidate (its logit is set to -inf first; the reference
      relies on a trained model never predicting it, an untrained one may).
    logits_eos_inf: EOS logit set to -inf before anything else.
    confidence_eos_eot_inf: a candidate that is EOS or end-of-turn gets confidence
      -inf, so it is committed only once nothing else in the block is left.

  Returns:
    (candidates int32 [B, T], confidence float32 [B, T]).
  """
  noised = temperature > 0 if noised is None else noised
  if noise == 'counter':
    return _counter_candidates(logits, key, temperature=temperature, noised=noised,
                               remasking=remasking, mask_id=mask_id, eos_id=eos_id,
                               eot_id=eot_id, logits_eos_inf=logits_eos_inf,
                               confidence_eos_eot_inf=confidence_eos_eot_inf,
                               interpret=kernel_interpret)
  if noise != 'jax':
    raise ValueError(f'unknown noise {noise!r}; known: {NOISES}.')
  logits = logits.astype(jnp.float32).at[..., mask_id].set(-jnp.inf)
  if logits_eos_inf:
    logits = logits.at[..., eos_id].set(-jnp.inf)
  u_gumbel, u_random = step_uniforms(key, logits.shape, remasking, temperature,
                                     noised)
  noisy = logits if u_gumbel is None else (
      logits - temperature * jnp.log(-jnp.log(u_gumbel)))
  candidates = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
  if remasking == 'low_confidence':
    chosen = jnp.take_along_axis(logits, candidates[..., None], axis=-1)[..., 0]
    confidence = jnp.exp(chosen - jax.nn.logsumexp(logits, axis=-1))
  elif remasking == 'random':
    confidence = u_random
  else:
    raise ValueError(f'unknown remasking {remasking!r}; known: {REMASKING}.')
  if confidence_eos_eot_inf:
    special = (candidates == eos_id) | (candidates == eot_id)
    confidence = jnp.where(special, -jnp.inf, confidence)
  return candidates, confidence


def rank_by_confidence(confidence: jax.Array, eligible: jax.Array) -> jax.Array:
  """Rank [B, T] of every position: eligible ones first, by confidence
  descending, ties by lower position; ineligible ones after all eligible."""
  b, t = confidence.shape
  idx = jnp.broadcast_to(jnp.arange(t), (b, t))
  # lexsort: last key is primary.
  order = jnp.lexsort((idx, -confidence, ~eligible), axis=-1)
  return jnp.zeros_like(order).at[jnp.arange(b)[:, None], order].set(idx)


def select_top_k(confidence: jax.Array, eligible: jax.Array,
                 k: jax.Array) -> jax.Array:
  """LLaDA's rule: commit the k[b] most confident eligible positions of row b.

  confidence [B, T] float, eligible [B, T] bool, k [B] int -> bool [B, T].
  """
  rank = rank_by_confidence(confidence, eligible)
  return (rank < k[:, None]) & eligible


def _counter_candidates(logits, key, *, temperature, noised, remasking, mask_id,
                        eos_id, eot_id, logits_eos_inf, confidence_eos_eot_inf,
                        interpret):
  from dllm_jax.kernels import fused  # pylint: disable=g-import-not-at-top
  seed = fused.seed_from_key(key)
  eos = eos_id if logits_eos_inf else None
  if noised and not isinstance(temperature, (int, float)):
    candidates, confidence = _counter_noised(logits, seed, temperature, mask_id, eos)
  else:
    candidates, confidence = fused.candidates(
        logits, seed, temperature=temperature if noised else 0.0, mask_id=mask_id,
        eos_id=eos, interpret=interpret)
  if remasking == 'random':
    shape = candidates.shape
    rows = jnp.arange(candidates.size, dtype=jnp.uint32).reshape(shape)
    confidence = fused.counter_uniform(seed[1], seed[0], rows, jnp.uint32(0))
  elif remasking != 'low_confidence':
    raise ValueError(f'unknown remasking {remasking!r}; known: {REMASKING}.')
  if confidence_eos_eot_inf:
    special = (candidates == eos_id) | (candidates == eot_id)
    confidence = jnp.where(special, -jnp.inf, confidence)
  return candidates, confidence


def _counter_noised(logits, seed, temperature, mask_id, eos_id):
  """`fused.candidates_jnp` with Gumbel noise (one vocabulary split) for a traced
  temperature, which the twin and the kernel take as a Python float: the same
  operations, so the same candidates and confidences bit for bit.
  logits [..., V] -> (candidates [...], confidence [...])."""
  from dllm_jax.kernels import fused  # pylint: disable=g-import-not-at-top
  shape, v = logits.shape[:-1], logits.shape[-1]
  flat = logits.reshape(-1, v)
  cols = jnp.arange(v, dtype=jnp.uint32)[None, :]
  excluded = cols == mask_id
  if eos_id is not None:
    excluded = excluded | (cols == eos_id)
  x = jnp.where(excluded, -jnp.inf, flat.astype(jnp.float32))
  rows = jnp.arange(flat.shape[0], dtype=jnp.uint32)[:, None]
  noisy = x + temperature * fused.gumbel(seed[0], seed[1], rows, cols)
  cand = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
  chosen = jnp.take_along_axis(x, cand[:, None], axis=-1)[:, 0]
  m = jnp.max(x, axis=-1)
  conf = jnp.exp(chosen - m) / jnp.sum(jnp.exp(x - m[:, None]), axis=-1)
  return cand.reshape(shape), conf.reshape(shape)
