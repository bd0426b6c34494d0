"""The composed sampler: traced float knobs do not recompile, prompt buckets
compile once per bucket and sample what unbucketed prompts sample, and rules
and proposers plug in through their registries."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.sampling import generate as gen
from dllm_jax.sampling import proposers, remasking, rules


def _sc(**kw):
  return gen.SamplingConfig(**{**dict(steps=8, gen_length=8, block_length=4), **kw})


def test_float_knobs_do_not_recompile(tiny_config, tiny_params):
  """temperature, threshold, factor and cfg_scale (CFG on) reuse the compiled
  sampler; each still changes what it should."""
  prompt = np.array([[10, 20, 30], [7, 8, 9]])

  def run(**kw):
    return gen.sample(tiny_params, prompt, jax.random.key(0), config=tiny_config,
                      sampling=_sc(**kw))
  thr = lambda **kw: run(**{**dict(parallel='threshold', cfg_scale=1.0), **kw})
  first = thr(threshold=1.0)  # Compiles.
  n = gen.compilations()
  eager = thr(threshold=1e-3)
  noisy = thr(threshold=1.0, temperature=0.9)
  guided = thr(threshold=1.0, cfg_scale=4.0)
  assert gen.compilations() == n
  assert int(first.nfe) == 8 and int(eager.nfe) < 8
  assert not np.array_equal(noisy.tokens, first.tokens)
  assert not np.array_equal(guided.tokens, first.tokens)
  slow = run(parallel='factor', factor=0.01)  # A new rule compiles once ...
  n = gen.compilations()
  fast = run(parallel='factor', factor=50.0)  # ... a new factor does not.
  assert gen.compilations() == n
  assert int(slow.nfe) == 8 and int(fast.nfe) == 2


def test_bucket_length():
  assert [gen.bucket_length(n) for n in (0, 1, 32, 33, 4096)] == [32, 32, 32, 64, 4096]
  assert gen.bucket_length(5000) == 8192  # Past the largest: its multiples.
  assert gen.bucket_length(10, (8, 64)) == 64
  assert gen.bucket_length(40, max_length=50) == 50  # 64 would not fit.
  with pytest.raises(ValueError, match='buckets must be positive'):
    gen.bucket_length(3, ())


def test_prompt_buckets_compile_once_and_sample_as_unpadded(tiny_config, tiny_params):
  """Prompts of 5, 3 and 9 tokens share the 32 bucket: one compilation; a row
  samples the same whatever shares its batch, and the same as its unpadded
  prompt (padding is its own segment, positions count real tokens), also with
  noise (drawn per block position, not per canvas position)."""
  cfg, params = tiny_config, tiny_params
  p, q, r = [10, 20, 30, 40, 50], [7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]

  def run(prompts, temperature, buckets=gen.PROMPT_BUCKETS):
    tokens, mask = gen.pad_prompts(prompts, cfg.pad_id, buckets=buckets)
    out = gen.generate(params, tokens, jax.random.key(1), config=cfg,
                       sampling=_sc(temperature=temperature), prompt_mask=mask)
    return np.asarray(out)[:, -8:]
  a = run([p, q], 0.0)
  n = gen.compilations()
  b = run([p, r], 0.0)
  assert gen.compilations() == n
  np.testing.assert_array_equal(a[0], b[0])
  for temperature in (0.0, 0.8):
    bucketed = run([p, q], temperature)
    unpadded = run([p, p], temperature, buckets=None)
    np.testing.assert_array_equal(bucketed[0], unpadded[0])


def _toy_logits(tokens, segment_ids, positions, output_window):
  """A peaked distribution per position that depends on its token and index."""
  c = (tokens * 3 + jnp.arange(tokens.shape[1])) % 7
  logits = 4.0 * jax.nn.one_hot(c, 12) - 0.1 * jnp.arange(12)
  return jax.lax.dynamic_slice_in_dim(logits, output_window[0], output_window[1], 1)


@dataclasses.dataclass(frozen=True)
class CommitAll:
  """A rule written outside the library: every masked position at once."""

  scheduled: ClassVar[bool] = False

  def select(self, confidence, eligible, ctx):
    return eligible


def test_a_new_rule_is_one_class_and_one_registry_entry(monkeypatch):
  monkeypatch.setitem(rules.RULES, 'all_at_once', CommitAll)
  sc = gen.SamplingConfig(steps=3, gen_length=12, block_length=4,
                          parallel='all_at_once', mask_id=11)
  sc.validate()
  canvas = jnp.asarray([[1, 2] + [11] * 12], jnp.int32)
  state = jax.jit(lambda c: gen.denoise(_toy_logits, c, None, None, jax.random.key(0),
                                        sampling=sc, start=2, eos_id=10, eot_id=9))(canvas)
  assert int(state.nfe) == 3  # One step per block.
  assert not np.any(np.asarray(state.tokens) == 11)
  np.testing.assert_array_equal(state.commit_step[0, 2:], np.repeat(np.arange(3), 4))


@pytest.mark.parametrize('noise', ['jax', 'counter'])
def test_proposers_with_traced_temperature_equal_the_static_path(noise):
  """The lax.cond on a traced temperature gives what a Python temperature gives
  (0: plain argmax; > 0: the same noise): the same candidates, confidences up
  to XLA's fusion choices in a cond branch (an ulp)."""
  logits = jax.random.normal(jax.random.key(2), (2, 8, 300)) * 3
  key = jax.random.key(3)
  kw = dict(remasking='low_confidence', mask_id=3, eos_id=9, eot_id=8,
            logits_eos_inf=True)
  proposer = proposers.PROPOSERS[noise](**kw)
  propose = jax.jit(lambda t: proposer.propose(
      logits, key, gen.Knobs.of(gen.SamplingConfig(temperature=t))))
  for t in (0.0, 0.7):
    want = jax.jit(lambda: remasking.candidates_and_confidence(  # pylint: disable=cell-var-from-loop
        logits, key, temperature=t, noise=noise, **kw))()
    got = propose(t)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
  assert not np.array_equal(propose(0.0)[0], propose(0.7)[0])
