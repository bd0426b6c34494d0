"""The jitted sampler commits exactly what the NumPy LLaDA transcription commits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models as presets
from dllm_jax.sampling import generate as gen
from dllm_jax.sampling import remasking
from dllm_jax.sampling.schedule import transfer_schedule
from tests import llada_reference as ref
from tests import support

V, MASK, EOS, EOT = 12, 11, 10, 9
slow = pytest.mark.slow


def _peak(x, xp):
  """Per-position peak location c in [0, V-2], depending on the whole canvas."""
  t = x.shape[1]
  s = x.sum(axis=1, keepdims=True)
  pos = xp.arange(t)[None, :]
  m = (x * 3 + s * 7 + pos * 5) % 97
  return m / 97 * (V - 2)


# Logits stay in a range where float32 softmax does not saturate to exactly 1.0
# (that would turn distinct float64 confidences into float32 ties), and are
# asymmetric in v, so that only identical rows have mathematically equal confidence.
def toy_logits_np(x):
  c = _peak(np.asarray(x, np.int64), np)[..., None]
  v = np.arange(V)
  logits = -(v - c) ** 2 * (1 + 0.1 * v) / 8.0
  logits[..., MASK] = -100.0
  return logits


def _window(logits, output_window):
  if output_window is None:
    return logits
  start, length = output_window
  return jax.lax.dynamic_slice_in_dim(logits, start, length, axis=1)


def toy_logits_jnp(x, segment_ids=None, positions=None, output_window=None):
  c = _peak(x.astype(jnp.int32), jnp)[..., None].astype(jnp.float32)
  v = jnp.arange(V, dtype=jnp.float32)
  logits = -(v - c) ** 2 * (1 + 0.1 * v) / 8.0
  return _window(logits.at[..., MASK].set(-100.0), output_window)


def tied_logits_np(x):
  """Depends only on the token at each position: every mask row is identical."""
  c = (np.asarray(x, np.int64) * 3 % 7)[..., None]
  logits = -(np.arange(V) - c) ** 2 / 4.0
  logits[..., MASK] = -100.0
  return logits


def tied_logits_jnp(x, segment_ids=None, positions=None, output_window=None):
  c = (x.astype(jnp.int32) * 3 % 7)[..., None].astype(jnp.float32)
  logits = -(jnp.arange(V, dtype=jnp.float32) - c) ** 2 / 4.0
  return _window(logits.at[..., MASK].set(-100.0), output_window)


def _run_jax(logits_fn, prompt, key, sc, canvas=None, start=None):
  sc = dataclasses.replace(sc, mask_id=MASK)
  if canvas is None:
    canvas = np.concatenate(
        [prompt, np.full((prompt.shape[0], sc.gen_length), MASK)], 1)
    start = prompt.shape[1]
  fn = jax.jit(lambda c, k: gen.denoise(logits_fn, c, None, None, k, sampling=sc,
                                        start=start, eos_id=EOS, eot_id=EOT))
  state = fn(jnp.asarray(canvas, jnp.int32), key)
  return np.asarray(state.tokens), np.asarray(state.commit_step)


def _replay(key, sc, shape):
  """The uniforms the JAX sampler drew at each step (for the current block
  [lo, hi) only), placed into full-canvas arrays for the reference."""
  b, t, v = shape
  def uniforms(step, lo, hi):
    ug, ur = remasking.step_uniforms(jax.random.fold_in(key, step), (b, hi - lo, v),
                                     sc.remasking, sc.temperature)
    full_g, full_r = np.full((b, t, v), 0.5), np.full((b, t), 0.5)
    if ug is not None:
      full_g[:, lo:hi] = np.asarray(ug, np.float64)
    if ur is not None:
      full_r[:, lo:hi] = np.asarray(ur, np.float64)
    return full_g, full_r
  return uniforms


def _run_ref(logits_np, prompt, key, sc, canvas=None, start=None):
  b = prompt.shape[0] if canvas is None else canvas.shape[0]
  t = prompt.shape[1] + sc.gen_length if canvas is None else canvas.shape[1]
  return ref.reference_generate(
      logits_np, prompt, steps=sc.steps, gen_length=sc.gen_length,
      block_length=sc.block_length, temperature=sc.temperature,
      cfg_scale=sc.cfg_scale, remasking=sc.remasking, mask_id=MASK, eos_id=EOS,
      eot_id=EOT, logits_eos_inf=sc.logits_eos_inf,
      confidence_eos_eot_inf=sc.confidence_eos_eot_inf,
      uniforms=_replay(key, sc, (b, t, V)), canvas=canvas, start=start)


PROMPT = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 1, 8], [2, 2, 2, 2, 2]])


# Each case compiles its own sampler: the default run keeps several blocks with
# several tokens a step and the uneven splits; -m slow runs the rest.
@pytest.mark.parametrize('steps,gen_length,block_length', [
    pytest.param(16, 16, 16, marks=slow), pytest.param(8, 16, 16, marks=slow),
    pytest.param(16, 16, 4, marks=slow), (8, 16, 8), pytest.param(4, 16, 4, marks=slow),
    (5, 10, 10), pytest.param(6, 12, 4, marks=slow), (3, 16, 16)])
def test_sampler_matches_reference_greedy(steps, gen_length, block_length):
  sc = gen.SamplingConfig(steps=steps, gen_length=gen_length,
                          block_length=block_length)
  key = jax.random.key(0)
  got, got_steps = _run_jax(toy_logits_jnp, PROMPT, key, sc)
  want, want_steps = _run_ref(toy_logits_np, PROMPT, key, sc)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_steps, want_steps)
  assert not np.any(got == MASK)


@pytest.mark.parametrize('cfg_scale', [pytest.param(0.5, marks=slow), 2.0])
def test_sampler_matches_reference_with_cfg(cfg_scale):
  sc = gen.SamplingConfig(steps=8, gen_length=16, block_length=8, cfg_scale=cfg_scale)
  key = jax.random.key(1)
  got, _ = _run_jax(toy_logits_jnp, PROMPT, key, sc)
  want, _ = _run_ref(toy_logits_np, PROMPT, key, sc)
  np.testing.assert_array_equal(got, want)
  # Guidance changes the outcome (the test would catch CFG being ignored).
  plain, _ = _run_jax(toy_logits_jnp, PROMPT, key,
                      dataclasses.replace(sc, cfg_scale=0.0))
  assert not np.array_equal(got, plain)


@pytest.mark.parametrize('steps,block_length', [pytest.param(16, 16, marks=slow),
                                                (4, 8), (2, 16)])
def test_sampler_matches_reference_with_tied_confidences(steps, block_length):
  sc = gen.SamplingConfig(steps=steps, gen_length=16, block_length=block_length)
  key = jax.random.key(2)
  got, got_steps = _run_jax(tied_logits_jnp, PROMPT, key, sc)
  want, want_steps = _run_ref(tied_logits_np, PROMPT, key, sc)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_steps, want_steps)
  # All confidences tie, so positions are committed left to right.
  gen_steps = got_steps[:, PROMPT.shape[1]:]
  assert np.all(np.diff(gen_steps, axis=1) >= 0)


@pytest.mark.parametrize('temperature,remask', [
    (0.5, 'low_confidence'), pytest.param(0.5, 'random', marks=slow),
    pytest.param(1.0, 'low_confidence', marks=slow), (1.0, 'random')])
def test_sampler_matches_reference_with_gumbel_noise(remask, temperature):
  sc = gen.SamplingConfig(steps=8, gen_length=16, block_length=8,
                          temperature=temperature, remasking=remask, cfg_scale=1.0)
  key = jax.random.key(3)
  got, _ = _run_jax(toy_logits_jnp, PROMPT, key, sc)
  want, _ = _run_ref(toy_logits_np, PROMPT, key, sc)
  np.testing.assert_array_equal(got, want)


def test_sampler_matches_reference_random_remasking_greedy():
  sc = gen.SamplingConfig(steps=8, gen_length=16, block_length=4, remasking='random')
  key = jax.random.key(4)
  got, _ = _run_jax(toy_logits_jnp, PROMPT, key, sc)
  want, _ = _run_ref(toy_logits_np, PROMPT, key, sc)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('logits_eos_inf,conf_eos_eot_inf', [
    pytest.param(True, False, marks=slow), pytest.param(False, True, marks=slow),
    (True, True)])
def test_sampler_matches_reference_with_eos_options(logits_eos_inf, conf_eos_eot_inf):
  sc = gen.SamplingConfig(steps=8, gen_length=16, block_length=8,
                          logits_eos_inf=logits_eos_inf,
                          confidence_eos_eot_inf=conf_eos_eot_inf)
  key = jax.random.key(5)
  got, got_steps = _run_jax(toy_logits_jnp, PROMPT, key, sc)
  want, want_steps = _run_ref(toy_logits_np, PROMPT, key, sc)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_steps, want_steps)
  if logits_eos_inf:
    assert not np.any(got[:, PROMPT.shape[1]:] == EOS)


def test_eos_confidence_option_commits_end_tokens_last():
  # Peaks near V-2 make EOS (10) and EOT (9) the candidates at many positions.
  sc = gen.SamplingConfig(steps=16, gen_length=16, block_length=16,
                          confidence_eos_eot_inf=True)
  got, got_steps = _run_jax(toy_logits_jnp, PROMPT, jax.random.key(6), sc)
  gen_tok, gen_step = got[:, 5:], got_steps[:, 5:]
  for row_tok, row_step in zip(gen_tok, gen_step):
    end = np.isin(row_tok, [EOS, EOT])
    if end.any() and (~end).any():
      # Committed after every other token of the block (an end token may have
      # become a candidate only late, so compare with the first commit time).
      assert row_step[end].min() > np.sort(row_step[~end])[0]


def test_infill_keeps_given_tokens_and_matches_reference():
  canvas = np.array([[1, MASK, MASK, 4, 5, MASK, 7, MASK],
                     [MASK, MASK, 3, 3, MASK, 2, 2, 2]])
  sc = gen.SamplingConfig(steps=4, gen_length=8, block_length=8)
  key = jax.random.key(7)
  got, _ = _run_jax(toy_logits_jnp, None, key, sc, canvas=canvas, start=0)
  want, _ = _run_ref(toy_logits_np, None, key, sc, canvas=canvas, start=0)
  np.testing.assert_array_equal(got, want)
  given = canvas != MASK
  np.testing.assert_array_equal(got[given], canvas[given])
  assert not np.any(got == MASK)


def test_transfer_schedule_matches_reference():
  mask_index = np.zeros((4, 16), bool)
  for i, n in enumerate([16, 7, 0, 13]):
    mask_index[i, :n] = True
  for steps in (1, 3, 5, 16):
    want = ref.get_num_transfer_tokens(mask_index, steps)
    got = transfer_schedule(jnp.asarray(mask_index.sum(1)), steps)
    np.testing.assert_array_equal(got, want)


# --- With the real model -----------------------------------------------------

@pytest.fixture(scope='module')
def tiny():
  cfg = presets.get_preset('tiny', n_layers=2, d_model=64, n_heads=4, d_ff=128,
                           max_len=64)
  return cfg, support.jit_init_params(cfg)


def test_batched_left_padded_prompts_match_one_by_one(tiny):
  cfg, params = tiny
  sc = gen.SamplingConfig(steps=8, gen_length=8, block_length=4)
  prompts = [[10, 20, 30, 40, 50], [7, 8], [99, 98, 97]]
  tokens, mask = gen.pad_prompts(prompts, cfg.pad_id)
  batched = np.asarray(gen.generate(params, tokens, jax.random.key(0), config=cfg,
                                    sampling=sc, prompt_mask=mask))
  for i, p in enumerate(prompts):
    single = np.asarray(gen.generate(params, np.array([p]), jax.random.key(0),
                                     config=cfg, sampling=sc))
    np.testing.assert_array_equal(batched[i, -sc.gen_length:], single[0, len(p):])


def test_generate_with_model_keeps_prompt(tiny):
  cfg, params = tiny
  sc = gen.SamplingConfig(steps=4, gen_length=8, block_length=8, temperature=1.0)
  prompt = np.array([[1, 2, 3]])
  out = np.asarray(gen.generate(params, prompt, jax.random.key(1), config=cfg,
                                sampling=sc))
  assert out.shape == (1, 11)
  np.testing.assert_array_equal(out[:, :3], prompt)
  assert not np.any(out == cfg.mask_id)


# --- Bad input -----------------------------------------------------------------

@pytest.mark.parametrize('kwargs,match', [
    (dict(gen_length=10, block_length=4), 'not divisible by block_length'),
    (dict(gen_length=16, block_length=4, steps=6), 'not divisible by the number of blocks'),
    (dict(remasking='top_p'), "unknown remasking 'top_p'"),
    (dict(gen_length=64, block_length=64, steps=64), 'exceeds the model max_len'),
])
def test_generate_rejects_bad_settings(tiny, kwargs, match):
  cfg, params = tiny
  sc = gen.SamplingConfig(**{**dict(steps=4, gen_length=8, block_length=8), **kwargs})
  with pytest.raises(ValueError, match=match):
    gen.generate(params, np.array([[1, 2, 3]]), jax.random.key(0), config=cfg,
                 sampling=sc)


def test_generate_rejects_prompt_with_mask_token(tiny):
  cfg, params = tiny
  with pytest.raises(ValueError, match='contains the mask token'):
    gen.generate(params, np.array([[1, cfg.mask_id, 3]]), jax.random.key(0),
                 config=cfg, sampling=gen.SamplingConfig(steps=4, gen_length=8,
                                                        block_length=8))


def test_autoregressive_greedy_matches_step_by_step_argmax():
  from dllm_jax.sampling import autoregressive
  cfg = presets.get_preset('tiny', n_layers=2, d_model=32, n_heads=4, d_ff=64,
                           max_len=32, causal=True)
  params = support.jit_init_params(cfg)
  prompt = np.array([[1, 2, 3], [4, 5, 6]])
  got = np.asarray(autoregressive.greedy(params, prompt, config=cfg, gen_length=5))
  # Reference: grow the sequence one full-forward argmax at a time. The model is
  # causal, so the canvas is padded (with the mask id) to its final length 8:
  # one compile, and position n - 1 sees only the n tokens before it.
  seq = np.full((2, 8), cfg.mask_id)
  seq[:, :3] = prompt
  for n in range(3, 8):
    logits = np.array(support.jit_forward(params, jnp.asarray(seq), config=cfg))[:, n - 1]
    logits[:, cfg.mask_id] = -np.inf
    seq[:, n] = logits.argmax(-1)
  np.testing.assert_array_equal(got, seq)
  with pytest.raises(ValueError, match='needs a causal model'):
    autoregressive.greedy(params, prompt, config=presets.get_preset(
        'tiny', n_layers=2, d_model=32, n_heads=4, d_ff=64, max_len=32), gen_length=5)


# --- Skipped steps and traced knobs --------------------------------------------

def _denoiser(logits_fn, sc, start, traces=None):
  """jit of `denoise` with the knobs as a traced argument: (canvas, key, knobs)
  -> state; appends to `traces` once per trace."""
  def run(canvas, key, knobs):
    if traces is not None:
      traces.append(1)
    return gen.denoise(logits_fn, canvas, None, None, key,
                       sampling=dataclasses.replace(sc, mask_id=MASK).static_part(),
                       start=start, eos_id=EOS, eot_id=EOT, knobs=knobs)
  return jax.jit(run)


def test_steps_that_commit_nothing_are_skipped_with_reference_tokens():
  """8 steps per block of 4 masks: steps 4-7 of each block commit nothing and run
  no forward; later steps still draw the reference's keys (by step number)."""
  sc = gen.SamplingConfig(steps=16, gen_length=8, block_length=4, remasking='random',
                          temperature=0.7)
  key = jax.random.key(8)
  run = _denoiser(toy_logits_jnp, sc, 5)
  canvas = np.concatenate([PROMPT, np.full((3, 8), MASK)], 1)
  state = run(jnp.asarray(canvas, jnp.int32), key, gen.Knobs.of(sc))
  want, want_steps = _run_ref(toy_logits_np, PROMPT, key, sc)
  np.testing.assert_array_equal(state.tokens, want)
  np.testing.assert_array_equal(state.commit_step, want_steps)
  assert int(state.nfe) == 8  # Not 16.
  # A block without masks runs no step at all (same shapes: no new compile).
  canvas[:, 9:] = [1, 2, 3, 4]
  state = run(jnp.asarray(canvas, jnp.int32), key, gen.Knobs.of(sc))
  want, want_steps = _run_ref(toy_logits_np, None, key, sc, canvas=canvas, start=5)
  np.testing.assert_array_equal(state.tokens, want)
  np.testing.assert_array_equal(state.commit_step, want_steps)
  assert int(state.nfe) == 4


def test_traced_knobs_match_the_reference_without_retracing():
  """temperature (0 and > 0) and cfg_scale are traced: one trace serves all
  values, and each value still commits exactly the reference's tokens."""
  traces = []
  key = jax.random.key(9)
  canvas = jnp.asarray(np.concatenate([PROMPT, np.full((3, 8), MASK)], 1))
  base = gen.SamplingConfig(steps=4, gen_length=8, block_length=4, cfg_scale=1.0)
  run = _denoiser(toy_logits_jnp, base, 5, traces)
  for temperature, cfg_scale in [(0.0, 1.0), (0.5, 1.0), (1.0, 2.0), (0.0, 0.5)]:
    sc = dataclasses.replace(base, temperature=temperature, cfg_scale=cfg_scale)
    state = run(canvas, key, gen.Knobs.of(sc))
    want, _ = _run_ref(toy_logits_np, PROMPT, key, sc)
    np.testing.assert_array_equal(state.tokens, want)
  assert len(traces) == 1
