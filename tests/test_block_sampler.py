"""The block-diffusion sampler (sampling/block.py): the exact-cache sampler
against the uncached one and NumPy transcriptions of LLaDA2 / LLaDA2.1 /
dInfer (threshold, fixed and factor rules, the fused block write, rows that
stop at EOS in different blocks, token editing), tempered draws, and the
one-line errors for models it cannot run."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.models import attention
from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.sampling import block, remasking
from tests import block_reference as ref

MASK = 260  # The tiny preset's mask id (byte vocabulary).


def _small(**kw):
  return presets.get_preset('tiny', n_layers=2, d_model=32, n_heads=4, d_ff=64,
                            max_len=64, **kw)


@pytest.fixture(scope='module')
def sharp():
  """A random 2-layer model with a scaled head: confident enough (0.2-0.99) for
  the threshold rules to matter; EOS is a token it often predicts."""
  cfg = _small()
  cfg = dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, eos=163))
  params = model.init_params(cfg, jax.random.key(0))
  params['ff_out']['kernel'] = params['ff_out']['kernel'] * 60
  return cfg, params


def test_threshold_rules_equal_llada2_and_dinfer():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 8, 40)).astype(np.float32) * 4
  logits[..., 39] = -30  # The mask id is never the argmax (see block.select).
  x = rng.integers(0, 39, (6, 8))
  is_mask = rng.random((6, 8)) < 0.7
  is_mask[:, 0] = True
  x = np.where(is_mask, 39, x)
  cand, conf = jax.jit(lambda l: remasking.candidates_and_confidence(
      l, jax.random.key(0), temperature=0.0, remasking='low_confidence', mask_id=39,
      eos_id=1, eot_id=2))(jnp.asarray(logits))
  select = jax.jit(block.select, static_argnums=3)
  for thr in (0.3, 0.6, 0.9):
    sc = block.BlockSamplingConfig(threshold=thr, threshold_rule='dinfer')
    got = select(conf, jnp.asarray(is_mask), jnp.ones(6, jnp.int32), sc)
    x0, want = ref.dinfer_threshold(logits, is_mask, x, 39, thr)
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(cand)[want], x0[want])
    for n in (1, 3):  # LLaDA2: > thr if at least n of them, else the top n.
      got = select(conf, jnp.asarray(is_mask), jnp.full(6, n, jnp.int32),
                   block.BlockSamplingConfig(threshold=thr))
      p = ref.softmax(logits).max(-1)
      for r in range(6):
        c = np.where(is_mask[r], p[r], -np.inf)
        high = c > thr
        want_r = high if high.sum() >= n else np.isin(
            np.arange(8), np.argsort(-c, kind='stable')[:min(n, is_mask[r].sum())])
        np.testing.assert_array_equal(np.asarray(got[r]), want_r)


@pytest.mark.parametrize('temperature,confidence', [(0.5, 'tempered'), (2.0, 'plain')])
def test_tempered_draws_follow_the_tempered_softmax(temperature, confidence):
  """Gumbel-max draws an exact sample of softmax(logits / T) (what LLaDA2 draws
  with torch.multinomial): 40,000 draws over a 6-token vocabulary (the mask id 5
  excluded) pass a chi-square test (draws from softmax(logits) fail it); the
  confidence is the candidate's tempered (LLaDA2) or plain (dInfer) probability."""
  logits = np.array([1.5, 0.0, -1.0, 0.7, -2.5, 3.0], np.float32)
  ids = presets.get_preset('tiny').ids
  ids = dataclasses.replace(ids, mask=5, eos=4, eot=4)
  sc = block.BlockSamplingConfig(temperature=temperature, confidence=confidence)
  n = 40_000
  cand, conf = jax.jit(lambda l, k: block.draw(l, k, sc, ids))(
      jnp.broadcast_to(logits, (2, n // 2, 6)), jax.random.key(7))
  cand, conf = np.asarray(cand).ravel(), np.asarray(conf).ravel()
  want = ref.softmax(np.where(np.arange(6) == 5, -np.inf, logits / temperature))
  counts = np.bincount(cand, minlength=6)
  assert counts[5] == 0
  chi2 = np.sum((counts[:5] - n * want[:5]) ** 2 / (n * want[:5]))
  assert chi2 < 18.47, (counts, n * want)  # p > 0.001 at 4 degrees of freedom.
  scale = temperature if confidence == 'tempered' else 1.0
  p = ref.softmax(np.where(np.arange(6) == 5, -np.inf, logits / scale))
  np.testing.assert_allclose(conf, p[cand], rtol=1e-5)


@functools.partial(jax.jit, static_argnames=('cfg', 'block_length'))
def _block_causal_forward(params, x, *, cfg, block_length):
  return model.forward(params, x, config=cfg,
                       attention=attention.block_causal(block_length))


def _reference_logits(cfg, params, block_length):
  """The references' `logits_fn` (one compile per canvas length, shared)."""
  return lambda x: np.asarray(_block_causal_forward(
      params, jnp.asarray(x, jnp.int32), cfg=cfg, block_length=block_length))


PROMPTS = np.random.default_rng(0).integers(3, 250, (3, 11)).astype(np.int32)
LENGTHS = np.array([11, 5, 8])
# The same lengths; the sharp model ends each row at EOS before its last block.
EARLY = np.random.default_rng(1).integers(3, 250, (3, 11)).astype(np.int32)


def _knobs(**kw) -> block.BlockSamplingConfig:
  """16 new tokens in blocks of 4, 4 steps a block (threshold 0.5), and `kw`."""
  return block.BlockSamplingConfig(**{'gen_length': 16, 'block_length': 4,
                                      'steps': 4, 'threshold': 0.5, **kw})


def _stop_blocks(lengths) -> tuple[np.ndarray, int, int]:
  """(canvas block of each row's last answer token [B], first generated block
  k0, the canvas's last block) of prompts of LENGTHS answered in `lengths` [B]
  by `_knobs()`."""
  k0, n, shift, _ = block.layout(LENGTHS, 4, 16)
  return (shift + LENGTHS + np.asarray(lengths) - 1) // 4, k0, k0 + n - 1


def _llada2(cfg, params, prompts, threshold: float = 0.5) -> list[np.ndarray]:
  """Each row's LLaDA2 `generate` answer under `_knobs(threshold=threshold)`."""
  logits_fn = _reference_logits(cfg, params, 4)
  return [ref.llada2_generate(logits_fn, prompts[r, :LENGTHS[r]], gen_length=16,
                              block_length=4, steps=4, threshold=threshold,
                              eos_id=163, mask_id=MASK)[0]
          for r in range(len(prompts))]


def _cached_and_uncached(cfg, params, prompts):
  """(cached, uncached) `BlockSample`s of prompts [3, 11] (LENGTHS) by `_knobs()`."""
  return [block.generate(params, prompts, jax.random.key(0), config=cfg,
                         sampling=_knobs(cache=c), prompt_lengths=LENGTHS)
          for c in (True, False)]


def test_the_sampler_is_one_program_with_no_host_call_per_step(sharp):
  """`block.generate` runs one compiled `while` loop over the steps with no
  host callback or transfer inside: the host waits once, for the answer."""
  cfg, params = sharp
  sc = _knobs()
  k0, n, shift, last = block.layout(LENGTHS, sc.block_length, sc.gen_length)
  text = block._sample.lower(  # pylint: disable=protected-access
      params, PROMPTS, LENGTHS, shift, last, jax.random.key(0), block.BlockKnobs.of(sc),
      config=cfg, sc=sc.program_part(), k0=k0, n_blocks=n).as_text()
  assert 'stablehlo.while' in text
  for host in ('callback', 'outfeed', 'infeed', 'send', 'recv'):
    assert host not in text.lower(), host


def test_cached_sampler_equals_uncached_and_llada2_on_ragged_rows(sharp):
  """Rows of prompt lengths 11, 5, 8 (blocks of 4): EOS ends rows 0 and 2 in
  different blocks, row 1 runs to gen_length; the cache changes nothing."""
  cfg, params = sharp
  cached, uncached = _cached_and_uncached(cfg, params, PROMPTS)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_array_equal(cached.lengths, uncached.lengths)
  for r, want in enumerate(_llada2(cfg, params, PROMPTS)):
    n = int(cached.lengths[r])
    np.testing.assert_array_equal(np.asarray(cached.tokens[r, :n]), want)
  assert sorted(np.asarray(cached.lengths).tolist()) == [13, 14, 16]
  assert int(cached.nfe) < 4 * 6  # The threshold took several tokens a step.


def test_rows_stop_at_eos_in_different_blocks_and_so_does_the_batch(sharp):
  """Rows (prompt lengths 11, 5, 8) ending at EOS in three different blocks,
  each before its own last block: the cached sampler equals the uncached one
  and LLaDA2; a length ends at the row's first EOS, EOS fills the rest; the
  batch stops after the block in which its last row ended."""
  cfg, params = sharp
  cached, uncached = _cached_and_uncached(cfg, params, EARLY)  # Compiled above.
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_array_equal(cached.lengths, uncached.lengths)
  tokens, lengths = np.asarray(cached.tokens), np.asarray(cached.lengths)
  for r, want in enumerate(_llada2(cfg, params, EARLY)):
    assert lengths[r] == np.flatnonzero(tokens[r] == 163)[0] + 1 < 16
    assert (tokens[r, lengths[r]:] == 163).all()
    np.testing.assert_array_equal(tokens[r, :lengths[r]], want)
  stop, k0, last = _stop_blocks(lengths)
  own_last = block.layout(LENGTHS, 4, 16)[3]
  assert len(set(stop.tolist())) == 3 and (stop < own_last).all(), (stop, own_last)
  # Blocks k0..max(stop) ran, not k0..last: a block write after each but the
  # last one that ran (the uncached sampler writes none).
  assert stop.max() < last
  assert int(cached.nfe) == int(uncached.nfe) + stop.max() - k0


def test_fixed_and_factor_rules_and_the_fused_write_equal_uncached(sharp):
  """On the rows of the test above: the fixed rule (one token a step) and the
  factor rule (factor 2: several tokens a step) give the same tokens with and
  without the cache, and with the block write fused into the next block's first
  step (as many forwards as uncached: one fewer per finished block than the
  separate write); the fixed rule equals LLaDA2's `generate` with a threshold above 1
  (no confidence passes it: exactly the schedule's n_s a step)."""
  cfg, params = sharp
  ways = {'uncached': dict(cache=False), 'cached': {},
          'fused': dict(fuse_write=True)}
  runs = [(rule, way) for rule in ('fixed', 'factor') for way in ways
          if (rule, way) != ('factor', 'fused')]  # The write does not see the rule.

  @jax.jit  # Every sampler in one program: one compile.
  def sample(params, key):
    return {run: block.generate(params, EARLY, key, config=cfg, prompt_lengths=LENGTHS,
                                sampling=_knobs(parallel=run[0], factor=2.0,
                                                **ways[run[1]]))
            for run in runs}
  outs = sample(params, jax.random.key(0))
  for rule, way in runs:
    base = outs[rule, 'uncached']
    np.testing.assert_array_equal(outs[rule, way].tokens, base.tokens)
    np.testing.assert_array_equal(outs[rule, way].lengths, base.lengths)
    stop, k0, last = _stop_blocks(base.lengths)
    assert stop.max() < last  # These rows stop early under every rule, too.
    blocks = stop.max() - k0 + 1  # The batch's blocks.
    writes = {'uncached': 0, 'cached': blocks - 1, 'fused': 0}[way]
    assert int(outs[rule, way].nfe) == int(base.nfe) + writes, (rule, way)
    if rule == 'fixed':  # One token a step: 4 steps a block.
      assert int(base.nfe) == 4 * blocks
    else:  # Several tokens in some step.
      assert int(base.nfe) < 4 * blocks
  fixed = outs['fixed', 'cached']
  for r, want in enumerate(_llada2(cfg, params, EARLY, threshold=2.0)):
    n = int(fixed.lengths[r])
    np.testing.assert_array_equal(np.asarray(fixed.tokens[r, :n]), want)


def test_one_editing_step_equals_llada21():
  """One LLaDA2.1 step (mask threshold with at least 1, edits of committed answer
  tokens above the editing threshold), rows with and without masks left."""
  rng = np.random.default_rng(1)
  blk = np.array([[5, MASK, 7, MASK], [5, 6, 7, 8], [9, 9, MASK, MASK]])
  cand = rng.integers(0, 12, blk.shape)
  conf = rng.random(blk.shape).astype(np.float32)
  sc = block.BlockSamplingConfig(threshold=0.7, min_tokens=1, editing_threshold=0.3,
                                 max_post_steps=2)
  s = dict(settled=jnp.zeros(3, bool), done=jnp.zeros(3, bool), step=jnp.int32(0),
           post=jnp.asarray([0, 2, 0]))
  new, settled, post = block._commit(  # pylint: disable=protected-access
      jnp.asarray(blk), jnp.asarray(cand), jnp.asarray(conf), s, jnp.asarray([4]),
      jnp.asarray([1, 0, 2]), sc=sc, ids=_small().ids.__class__(
          mask=MASK, bos=0, eos=1, eot=2, pad=3))
  for r, prompt_end in enumerate([1, 0, 2]):
    active = blk[r] == MASK
    c = np.where(active, conf[r], -np.inf)
    take = (c > 0.7) if (c > 0.7).sum() >= 1 else np.isin(np.arange(4), [np.argmax(c)])
    take &= active
    edit = ~active & (np.arange(4) >= prompt_end) & (conf[r] > 0.3) & (cand[r] != blk[r])
    want = np.where(take | edit, cand[r], blk[r])
    np.testing.assert_array_equal(np.asarray(new[r]), want)
  # Row 1 had no masks: its third step without masks exceeds max_post_steps=2.
  assert bool(settled[1]) and int(post[1]) == 3
  # Rows 0 and 2 started with masks: never settled in this step (max_post_steps).
  np.testing.assert_array_equal(np.asarray(settled)[[0, 2]], [False, False])


@pytest.mark.slow
def test_token_editing_equals_llada21(sharp):
  cfg, params = sharp
  sc = block.BlockSamplingConfig(gen_length=12, block_length=4, threshold=0.7,
                                 min_tokens=1, editing_threshold=0.3,
                                 max_post_steps=3)
  out = block.generate(params, PROMPTS[:2], jax.random.key(0), config=cfg,
                       sampling=sc, prompt_lengths=LENGTHS[:2])
  logits_fn = _reference_logits(cfg, params, 4)
  edits = 0
  for r in range(2):
    want, _, e = ref.llada21_generate(
        logits_fn, PROMPTS[r, :LENGTHS[r]], gen_length=12, block_length=4,
        threshold=0.7, editing_threshold=0.3, max_post_steps=3, eos_id=163,
        mask_id=MASK)
    edits += e
    n = int(out.lengths[r])
    np.testing.assert_array_equal(np.asarray(out.tokens[r, :n]), want)
  assert edits > 0  # The test exercises editing.


def test_bad_input_is_a_one_line_error(tiny_config):
  sc = block.BlockSamplingConfig(gen_length=8, block_length=4)
  with pytest.raises(ValueError, match='causal'):
    block.check_model(presets.get_preset('tiny', causal=True), sc)
  with pytest.raises(ValueError, match="objective 'pretrain', without blocks"):
    block.check_model(tiny_config, sc, {'config': {'train': {'objective': 'pretrain'}}})
  with pytest.raises(ValueError, match='block_length=4 differs from the block size 32'):
    block.check_model(tiny_config, sc, {'config': {'train': {
        'objective': 'block_diffusion', 'block': {'block_size': 32}}}})
  with pytest.raises(ValueError, match='more than the model max_len 64'):
    block.generate(None, np.zeros((1, 60), np.int32), jax.random.key(0),
                   config=_small(), sampling=sc)
