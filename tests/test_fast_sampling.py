"""Parallel decoding (Fast-dLLM threshold / factor rules, while_loop blocks) and
block KV caches (prefix, dual)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.tokenizers import ByteTokenizer
from dllm_jax.sampling import generate as gen
from tests import support

slow = pytest.mark.slow


# --- NumPy transcriptions of Fast-dLLM's selection loops (per row). ---

def fastdllm_threshold_np(confidence, eligible, threshold):
  """get_transfer_index with `threshold`: the top-k of all masked positions, k =
  number masked; then every one after the first below `threshold` is dropped."""
  out = np.zeros_like(eligible)
  for j in range(confidence.shape[0]):
    conf = np.where(eligible[j], confidence[j], -np.inf)
    n = int(eligible[j].sum())
    order = np.argsort(-conf, kind='stable')[:n]
    out[j, order] = True
    for k in range(1, n):
      if conf[order[k]] < threshold:
        out[j, order[k]] = False
  return out


def fastdllm_factor_np(confidence, eligible, factor):
  """get_transfer_index_dynamic: thresholds 1 - factor / (n + 1), the first
  always passes; commit the prefix of sorted confidences that pass."""
  out = np.zeros_like(eligible)
  for j in range(confidence.shape[0]):
    conf = np.where(eligible[j], confidence[j], -np.inf)
    n_masked = int(eligible[j].sum())
    threshs = [1 - factor / (n + 1) for n in range(1, n_masked + 1)]
    threshs[0] = -1
    ordered = np.sort(conf[eligible[j]])[::-1]
    top = 0
    while top < n_masked and ordered[top] >= threshs[top]:
      top += 1
    order = np.argsort(-conf, kind='stable')[:top]
    out[j, order] = True
  return out


@pytest.mark.parametrize('seed', range(5))
def test_threshold_and_factor_rules_match_fast_dllm(seed):
  rng = np.random.default_rng(seed)
  conf = rng.beta(5, 1, size=(6, 32)).astype(np.float32)  # Skewed towards 1.
  eligible = rng.random((6, 32)) < 0.7
  eligible[0] = False
  eligible[0, 3] = True  # A row with a single masked position.
  for tau in (0.5, 0.9, 0.99):
    got = gen.select_threshold(jnp.asarray(conf), jnp.asarray(eligible), tau)
    np.testing.assert_array_equal(got, fastdllm_threshold_np(conf, eligible, tau))
  for f in (0.5, 1.0, 2.0):
    got = gen.select_factor(jnp.asarray(conf), jnp.asarray(eligible), f)
    np.testing.assert_array_equal(got, fastdllm_factor_np(conf, eligible, f))
  assert np.all(np.asarray(gen.select_threshold(jnp.asarray(conf), jnp.asarray(
      eligible), 1.0)).sum(1) == np.minimum(eligible.sum(1), 1))


@pytest.fixture(scope='module')
def tiny():
  cfg = presets.get_preset('tiny', n_layers=2, d_model=64, n_heads=4, d_ff=128,
                           max_len=128)
  return cfg, support.jit_init_params(cfg)


def _prompts():
  tok = ByteTokenizer()
  prompts = [tok.encode('def f(x):', add_bos=True), tok.encode('import', add_bos=True)]
  return gen.pad_prompts(prompts, tok.pad_id)


_SAMPLES = {}


def _sample(tiny, **kw):
  """The sampler's state on `_prompts()` with settings `kw`; deterministic, so
  each setting runs once per module (several tests compare against the same
  uncached run)."""
  key = (tiny[0], tuple(sorted(kw.items())))
  if key not in _SAMPLES:
    _SAMPLES[key] = _run(tiny, **kw)
  return _SAMPLES[key]


def _run(tiny, **kw):
  """`_sample` without the memo: runs the sampler now."""
  cfg, params = tiny
  prompt, mask = _prompts()
  sc = gen.SamplingConfig(**{**dict(steps=32, gen_length=32, block_length=8), **kw})
  return gen.sample(params, prompt, jax.random.key(3), config=cfg, sampling=sc,
                    prompt_mask=mask)


def test_threshold_one_is_one_token_per_step(tiny):
  """threshold 1.0 commits exactly the most confident token each step, which is
  the fixed schedule with steps = gen_length; the while_loop takes 32 steps."""
  fixed = _sample(tiny, steps=32)
  thr = _sample(tiny, parallel='threshold', threshold=1.0)
  np.testing.assert_array_equal(thr.tokens, fixed.tokens)
  np.testing.assert_array_equal(thr.commit_step, fixed.commit_step)
  assert int(thr.nfe) == int(fixed.nfe) == 32


def test_adaptive_blocks_end_as_soon_as_they_have_no_masks(tiny):
  cfg, _ = tiny
  fast = _sample(tiny, parallel='threshold', threshold=1e-6)  # All in one step.
  assert int(fast.nfe) == 4  # One step per block of 8.
  p = _prompts()[0].shape[1]
  assert not np.any(np.asarray(fast.tokens)[:, p:] == cfg.mask_id)
  assert np.all(np.asarray(fast.commit_step)[:, p:].reshape(2, 4, 8) ==
                np.arange(4)[None, :, None])
  mid = _sample(tiny, parallel='factor', factor=1.0)
  assert 4 <= int(mid.nfe) <= 32
  assert not np.any(np.asarray(mid.tokens)[:, p:] == cfg.mask_id)


# Each case compiles its own cached sampler: the default run has each cache and
# each setting once; -m slow runs all six.
@pytest.mark.parametrize('extra,cache', [
    (dict(), 'prefix'), pytest.param(dict(), 'dual', marks=slow),
    pytest.param(dict(parallel='threshold', threshold=0.5), 'prefix', marks=slow),
    (dict(parallel='threshold', threshold=0.5), 'dual'),
    pytest.param(dict(cfg_scale=1.0, steps=16), 'prefix', marks=slow),
    (dict(cfg_scale=1.0, steps=16), 'dual')])
def test_cache_refreshed_every_step_equals_the_uncached_sampler(tiny, cache, extra):
  want = _sample(tiny, **extra)
  got = _sample(tiny, cache=cache, cache_refresh=1, **extra)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.commit_step, want.commit_step)
  assert int(got.nfe) == int(want.nfe)


@pytest.mark.parametrize('cache', ['prefix', 'dual'])
def test_cached_window_with_a_fresh_cache_equals_the_full_forward(tiny, cache):
  """The approximate cache's only error is staleness: with a cache just
  computed from the same canvas, the window's logits equal the full ones."""
  cfg, params = tiny
  tokens = jax.random.randint(jax.random.key(1), (2, 48), 0, 256)
  seg = jnp.ones((2, 48), jnp.int32).at[0, :5].set(0)
  pos = jnp.maximum(jnp.cumsum(seg, 1) - 1, 0)
  width = 8 if cache == 'dual' else 32

  @jax.jit  # One compile; eagerly every op of three forwards compiles alone.
  def run(params, tokens, seg, pos):
    full = model.forward(params, tokens, seg, pos, config=cfg)
    _, kv = model.forward_with_cache(params, tokens, seg, pos, config=cfg,
                                     output_window=(16, 8))
    logits, _ = model.forward_window(params, tokens[:, 16:16 + width], 16, kv, seg,
                                     pos, config=cfg, output_length=8)
    return logits, full[:, 16:24]
  logits, want = run(params, tokens, seg, pos)
  np.testing.assert_allclose(logits, want, atol=2e-5)


# Each case compiles its own cached sampler: the default run has each cache and
# each rule once; -m slow runs all four.
@pytest.mark.parametrize('cache,kw', [
    ('prefix', dict()), pytest.param('dual', dict(), marks=slow),
    pytest.param('prefix', dict(parallel='threshold', threshold=0.9), marks=slow),
    ('dual', dict(parallel='threshold', threshold=0.9))])
def test_approximate_caches_fill_every_mask(tiny, cache, kw):
  cfg, _ = tiny
  p = _prompts()[0].shape[1]
  out = _sample(tiny, cache=cache, **kw)
  assert not np.any(np.asarray(out.tokens)[:, p:] == cfg.mask_id)


@pytest.mark.parametrize('kwargs,match', [
    (dict(parallel='greedy'), "unknown parallel decoding 'greedy'"),
    (dict(cache='full'), "unknown cache 'full'"),
    (dict(threshold=0.0), r'threshold must be in \(0, 1\]'),
    (dict(factor=-1.0), 'factor must be positive'),
])
def test_bad_fast_sampling_settings(tiny, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _sample(tiny, **kwargs)


def test_autoregressive_kv_cache_decoder_equals_full_recompute():
  from dllm_jax.sampling import autoregressive as ar
  cfg = presets.get_preset('tiny', causal=True, n_layers=2, d_model=64, n_heads=4,
                           d_ff=128, max_len=64)
  params = support.jit_init_params(cfg, seed=4)
  prompt = np.random.default_rng(0).integers(0, 256, (3, 9))
  want = ar.greedy(params, prompt, config=cfg, gen_length=24, cache=False)
  got = ar.greedy(params, prompt, config=cfg, gen_length=24, cache=True)
  np.testing.assert_array_equal(got, want)


def test_counter_noise_sampler_is_reproducible_and_fills_masks(tiny):
  cfg, _ = tiny
  a = _sample(tiny, noise='counter', temperature=1.0, cache='dual',
              parallel='threshold', threshold=0.5)
  b = _run(tiny, noise='counter', temperature=1.0, cache='dual',
              parallel='threshold', threshold=0.5)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  p = _prompts()[0].shape[1]
  assert not np.any(np.asarray(a.tokens)[:, p:] == cfg.mask_id)
  c = _sample(tiny, noise='jax', temperature=1.0)
  assert not np.array_equal(a.tokens, c.tokens)
