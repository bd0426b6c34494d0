"""The fused candidate/confidence Pallas kernel (interpret mode on CPU) equals its
jnp twin; the twin equals the plain remasking path; counter noise is uniform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.sampling import remasking
from dllm_jax.kernels import fused

SEED = fused.seed_from_key(jax.random.key(7))


# Launch shapes under test (rows:tile:splits:lanes:warps): the default's shape,
# the vocabulary split in 3 (the last split overhangs) or automatically, and the
# per-lane running argmax.
SHAPES = ['8:128:1:0:8', '8:128:3:0:8', '4:128:0:1:4', '8:64:2:1:4']
slow = pytest.mark.slow

# Each (v, temperature, shape) interprets the kernel anew (seconds on CPU): the
# default run has every shape and temperature once at v = 1000 (not a multiple of
# the tile) and one v = 128 case; -m slow runs all 24.
_RANDOM_DEFAULT = {(1000, 0.0, SHAPES[0]), (1000, 0.7, SHAPES[1]),
                   (1000, 1.0, SHAPES[2]), (1000, 0.7, SHAPES[3]),
                   (128, 1.0, SHAPES[0])}
_RANDOM_CASES = [
    pytest.param(t, v, shape, id=f'{v}-{t}-{shape}',
                 marks=() if (v, t, shape) in _RANDOM_DEFAULT else slow)
    for v in (128, 1000) for t in (0.0, 0.7, 1.0) for shape in SHAPES]


def _both(logits, temperature, mask_id=3, eos_id=None, shape='8:128:1:0:8'):
  want = fused.candidates_jnp(logits, SEED, temperature=temperature, mask_id=mask_id,
                              eos_id=eos_id)
  got = fused.candidates_pallas(logits, SEED, temperature=temperature,
                                mask_id=mask_id, eos_id=eos_id,
                                kernel=fused.KernelConfig.parse(shape), interpret=True)
  return want, got


@pytest.mark.parametrize('temperature,v,shape', _RANDOM_CASES)
def test_kernel_equals_twin_on_random_logits(temperature, v, shape):
  logits = jax.random.normal(jax.random.key(0), (21, v)) * 4  # 21: rows padded.
  (wc, wp), (gc, gp) = _both(logits, temperature, shape=shape)
  np.testing.assert_array_equal(gc, wc)
  np.testing.assert_allclose(gp, wp, rtol=1e-5)
  assert not np.any(np.asarray(gc) == 3)  # The mask token never wins.


# The default shape and the lanes + splits one by default; -m slow runs all four.
@pytest.mark.parametrize('shape', [SHAPES[0], pytest.param(SHAPES[1], marks=slow),
                                   pytest.param(SHAPES[2], marks=slow), SHAPES[3]])
def test_kernel_equals_twin_with_ties_and_minus_inf(shape):
  logits = np.zeros((16, 300), np.float32)  # All tied: the first allowed index.
  logits[1, 250:] = 5.0  # A tie across tiles (and splits): the first one wins.
  logits[2, :] = -np.inf
  logits[2, 299] = 1.0  # Only the last (tail-tile) entry is finite.
  logits[3, :200] = -np.inf
  logits[4, [70, 140, 290]] = 2.0  # Equal maxima in different tiles and lanes.
  (wc, wp), (gc, gp) = _both(jnp.asarray(logits), 0.0, shape=shape)
  np.testing.assert_array_equal(gc, wc)
  np.testing.assert_allclose(gp, wp, rtol=1e-6)
  assert list(np.asarray(gc)[:5]) == [0, 250, 299, 200, 70]
  np.testing.assert_allclose(np.asarray(gp)[2], 1.0)


@pytest.mark.parametrize('shape', [pytest.param(SHAPES[0], marks=slow), SHAPES[3]])
def test_kernel_takes_bf16_logits_and_excludes_eos(shape):
  logits = (jax.random.normal(jax.random.key(1), (32, 500)) * 3).astype(jnp.bfloat16)
  logits = logits.at[:, 9].set(50.0)  # EOS would win everywhere ...
  for t in (0.0, 1.0):
    (wc, wp), (gc, gp) = _both(logits, t, eos_id=9, shape=shape)
    np.testing.assert_array_equal(gc, wc)
    np.testing.assert_allclose(gp, wp, rtol=1e-5)
    assert not np.any(np.asarray(gc) == 9)  # ... but logits_eos_inf removes it.


def test_twin_matches_the_plain_path_without_noise():
  logits = jax.random.normal(jax.random.key(2), (2, 8, 64)) * 3
  kw = dict(temperature=0.0, remasking='low_confidence', mask_id=3, eos_id=9, eot_id=8)
  want = remasking.candidates_and_confidence(logits, jax.random.key(0), **kw)
  got = remasking.candidates_and_confidence(logits, jax.random.key(0), noise='counter',
                                            **kw)
  got_kernel = remasking.candidates_and_confidence(
      logits, jax.random.key(0), noise='counter', kernel_interpret=True, **kw)
  for g in (got, got_kernel):
    np.testing.assert_array_equal(g[0], want[0])
    np.testing.assert_allclose(g[1], want[1], rtol=1e-5)


def test_counter_noise_is_uniform_and_depends_on_every_input():
  rows = jnp.arange(200, dtype=jnp.uint32)[:, None]
  cols = jnp.arange(500, dtype=jnp.uint32)[None, :]
  u = np.asarray(fused.counter_uniform(SEED[0], SEED[1], rows, cols))
  assert 0 < u.min() and u.max() < 1
  hist = np.histogram(u, bins=10, range=(0, 1))[0] / u.size
  np.testing.assert_allclose(hist, 0.1, atol=0.005)  # 100k draws.
  assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01
  other = np.asarray(fused.counter_uniform(SEED[0] + 1, SEED[1], rows, cols))
  assert np.mean(u == other) < 0.001
  # Gumbel argmax sampling follows the softmax: frequencies of a 4-way choice.
  logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.3, 0.4]] * 20000))
  cand, _ = fused.candidates_jnp(logits, SEED, temperature=1.0, mask_id=99)
  freq = np.bincount(np.asarray(cand), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_kernel_probe_runs_eagerly_inside_a_jit_trace():
  """The dispatcher first probes the kernel while the sampler is being traced; the
  probe must still evaluate (it once raised TracerBoolConversionError there)."""
  jax.jit(lambda x: (fused._probe(interpret=True), x)[1])(jnp.zeros(()))


def test_kernel_config_parses_and_rejects_bad_text():
  kc = fused.KernelConfig.parse('8:1024:0:1:4')
  assert (kc.rows, kc.tile, kc.splits, kc.lanes, kc.num_warps, kc.num_stages) == (
      8, 1024, 0, True, 4, 2)
  assert fused.KernelConfig.parse(kc.name()) == kc
  with pytest.raises(ValueError, match='rows:tile:splits:lanes:warps'):
    fused.KernelConfig.parse('8:1024')


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_split_twin_equals_the_twin(temperature):
  logits = np.array(jax.random.normal(jax.random.key(3), (6, 1000)) * 4)
  logits[0] = 0.0  # All tied.
  logits[1, :] = -np.inf  # No finite entry.
  logits[2, [10, 510, 990]] = 30.0  # Equal maxima in different splits.
  kw = dict(temperature=temperature, mask_id=3, eos_id=9)
  want = fused.candidates_jnp(jnp.asarray(logits), SEED, **kw)
  for splits in (2, 7, 16):  # 7: 1000 is not a multiple; the tail is padded.
    got = fused.candidates_jnp(jnp.asarray(logits), SEED, splits=splits, **kw)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
  if temperature == 0:
    assert list(np.asarray(want[0])[:3]) == [0, 0, 10]
