"""LLaDA losses against hand-computed NumPy references on fixed masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import objectives
from dllm_jax.objectives import masked as diffusion
from dllm_jax.tokenizers import BYTE_IDS

MASK = 99
RNG = np.random.default_rng(0)
B, L, V = 3, 6, 7
TOKENS = RNG.integers(0, V, (B, L))
LOGITS = RNG.normal(size=(B, L, V)).astype(np.float32)
T = np.array([0.0, 0.4, 0.9], np.float32)
U = RNG.uniform(size=(B, L)).astype(np.float32)


def np_ce(logits, targets):
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return lse - picked


def _noise(length=L):
  return diffusion.MaskNoise(t=jnp.asarray(T), u=jnp.asarray(U),
                             length=jnp.asarray(length, jnp.int32))


def test_pretrain_loss_matches_numpy_reference():
  lb = diffusion.pretrain_batch({'tokens': jnp.asarray(TOKENS)}, _noise(), mask_id=MASK)
  got = float(diffusion.loss_from_logits(jnp.asarray(LOGITS), lb))
  # Reference: p = (1 - eps) t + eps; masked iff u < p; sum CE/p over masked / (B L).
  p = (1 - 1e-3) * T + 1e-3
  masked = U < p[:, None]
  want = (np_ce(LOGITS, TOKENS) / p[:, None])[masked].sum() / (B * L)
  assert masked.any() and not masked.all()
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(lb.inputs), np.where(masked, MASK, TOKENS))


def test_pretrain_loss_at_t_zero_masks_with_eps():
  p = diffusion.mask_probability(jnp.zeros(())) 
  np.testing.assert_allclose(float(p), 1e-3, rtol=1e-6)


def test_pretrain_random_length_equals_truncation():
  """Cutting to length n by segment ids equals running on tokens[:, :n]."""
  n = 4
  lb = diffusion.pretrain_batch({'tokens': jnp.asarray(TOKENS)}, _noise(n), mask_id=MASK)
  got = float(diffusion.loss_from_logits(jnp.asarray(LOGITS), lb))
  p = (1 - 1e-3) * T + 1e-3
  masked = U[:, :n] < p[:, None]
  want = (np_ce(LOGITS[:, :n], TOKENS[:, :n]) / p[:, None])[masked].sum() / (B * n)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Without segments the cut is kv_lengths (no attention mask); with them, the
  # cut-off positions get their own segment.
  assert lb.attention.segment_ids is None
  assert (np.asarray(lb.attention.kv_lengths) == n).all()
  assert (np.asarray(lb.inputs)[:, n:] == TOKENS[:, n:]).all()  # never masked
  seg_lb = diffusion.pretrain_batch(
      {'tokens': jnp.asarray(TOKENS), 'segment_ids': jnp.ones((B, L), jnp.int32)},
      _noise(n), mask_id=MASK)
  seg = np.asarray(seg_lb.attention.segment_ids)
  assert (seg[:, :n] == 1).all() and (seg[:, n:] == -1).all()
  assert seg_lb.attention.kv_lengths is None
  np.testing.assert_array_equal(seg_lb.inputs, lb.inputs)
  np.testing.assert_array_equal(seg_lb.weights, lb.weights)


def test_random_length_drawn_in_about_one_percent_of_batches():
  keys = jax.random.split(jax.random.key(0), 4000)
  # Jitted: eagerly every op under the vmap compiles on its own.
  lengths = np.asarray(jax.jit(jax.vmap(
      lambda k: diffusion.sample_noise(k, (2, 50)).length))(keys))
  frac = np.mean(lengths < 50)
  assert 0.004 < frac < 0.02, frac
  assert lengths.min() >= 1


def test_padding_segment_is_never_masked():
  seg = np.ones((B, L), np.int32)
  seg[:, -2:] = 0
  lb = diffusion.pretrain_batch(
      {'tokens': jnp.asarray(TOKENS), 'segment_ids': jnp.asarray(seg)},
      diffusion.MaskNoise(t=jnp.ones(B), u=jnp.zeros((B, L)), length=jnp.asarray(L)),
      mask_id=MASK)
  assert (np.asarray(lb.weights)[:, -2:] == 0).all()
  assert (np.asarray(lb.inputs)[:, :-2] == MASK).all()


def test_sft_loss_matches_numpy_reference():
  prompt_lengths = np.array([2, 0, 5])
  lb = diffusion.sft_batch(
      {'tokens': jnp.asarray(TOKENS), 'prompt_lengths': jnp.asarray(prompt_lengths)},
      _noise(), mask_id=MASK)
  got = float(diffusion.loss_from_logits(jnp.asarray(LOGITS), lb))
  # Reference: prompt never masked; CE / (p * answer_length_i) summed / B.
  p = (1 - 1e-3) * T + 1e-3
  is_answer = np.arange(L)[None] >= prompt_lengths[:, None]
  masked = (U < p[:, None]) & is_answer
  answer_len = (L - prompt_lengths)[:, None]
  want = (np_ce(LOGITS, TOKENS) / (p[:, None] * answer_len))[masked].sum() / B
  np.testing.assert_allclose(got, want, rtol=1e-5)
  inputs = np.asarray(lb.inputs)
  for i, n in enumerate(prompt_lengths):
    np.testing.assert_array_equal(inputs[i, :n], TOKENS[i, :n])


def test_sft_loss_counts_eos_padding_as_answer():
  eos = 5
  tokens = np.array([[1, 2, 3, eos, eos, eos]])
  lb = diffusion.sft_batch(
      {'tokens': jnp.asarray(tokens), 'prompt_lengths': jnp.asarray([2])},
      diffusion.MaskNoise(t=jnp.ones(1), u=jnp.zeros((1, L)), length=jnp.asarray(L)),
      mask_id=MASK)
  np.testing.assert_array_equal(np.asarray(lb.inputs), [[1, 2] + [MASK] * 4])
  np.testing.assert_allclose(np.asarray(lb.weights)[0, 2:], 1 / 4)


def test_next_token_loss_matches_numpy_reference():
  seg = np.array([[1, 1, 1, 2, 2, 0]] * B)
  lb = diffusion.next_token_batch(
      {'tokens': jnp.asarray(TOKENS), 'segment_ids': jnp.asarray(seg)})
  got = float(diffusion.loss_from_logits(jnp.asarray(LOGITS), lb))
  # Reference: predict token i+1 at i within a document: pairs (0,1),(1,2),(3,4).
  ce = np_ce(LOGITS[:, [0, 1, 3]], TOKENS[:, [1, 2, 4]])
  np.testing.assert_allclose(got, ce.mean(), rtol=1e-5)


def test_unknown_objective_is_rejected():
  with pytest.raises(ValueError, match="unknown objective 'mlm'"):
    objectives.get('mlm')


def test_objectives_state_their_batches_and_attention():
  tokens = jnp.asarray(TOKENS)
  seg = jnp.ones((B, L), jnp.int32)
  settings = objectives.Settings(ids=BYTE_IDS, random_length_prob=0.0)
  nt = objectives.get('next_token')
  assert nt.causal_model and nt.data == 'text'
  lb = nt.loss_batch({'tokens': tokens, 'segment_ids': seg}, jax.random.key(0), settings)
  assert lb.attention.causal and lb.attention.segment_ids is seg
  sft = objectives.get('sft')
  assert sft.schema(4, 8, 'concat') == {'tokens': (4, 8), 'prompt_lengths': (4,)}
  assert set(objectives.get('pretrain').schema(4, 8, 'stream')) == {'tokens'}
  lb = sft.loss_batch({'tokens': tokens, 'prompt_lengths': jnp.full((B,), 2)},
                      jax.random.key(0), settings)
  assert not lb.attention.causal and not lb.attention.needs_mask
  assert not np.any(np.asarray(lb.weights)[:, :2])  # The prompt takes no loss.


def test_stratified_t_covers_ratios_evenly_and_stays_uniform():
  noise = diffusion.sample_noise(jax.random.key(0), (8, 4), stratified_t=True)
  t = np.sort(np.asarray(noise.t))
  np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-6)
  # Marginally U(0, 1): the mean over many draws of one row's t is 1/2.
  ts = jax.jit(jax.vmap(  # Jitted: eagerly every op compiles on its own.
      lambda k: diffusion.sample_noise(k, (8, 4), stratified_t=True).t[3]))(
          jax.random.split(jax.random.key(1), 4000))
  assert abs(float(ts.mean()) - 0.5) < 0.02
