"""The block sampler's reference knobs (issue 24, items 1-3) against NumPy
transcriptions of LLaDA2.0 / LLaDA2.1 `generate` (tests/block_reference.py):
`minimal_topk` (steps = min(steps, gen_length // minimal_topk) before the
schedule), `eos_early_stop` both ways for both versions (LLaDA2.0's early
return, longer than gen_length when its EOS lies in the last block's tail), and
the forward counts: each row's decision forwards equal the reference's forwards
for that prompt alone, token for token and forward for forward, on ragged
prompts (9, 13, 13, 6, 3, 3 tokens; blocks of 4; gen_length 10) that end at EOS
in different blocks, in a block's middle and in the last block's tail; and the
full-sequence sampler's per-row decision counts."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.models import attention
from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.sampling import block
from dllm_jax.sampling import generate as gen
from tests import block_reference as ref

MASK, EOS = 260, 163
GEN, BLOCK = 10, 4
# (prompt seed, prompt length): the sharp model's answers under 2.0 with
# threshold 0.5 (eos_early_stop on) run 11 tokens (EOS in the last block's
# tail), 8, 4 and 6 (EOS mid-block: rows 1, 2 and 4 end early), 10 (no EOS),
# 1; under 2.1 rows 2 and 5 end early at EOS (the lengths pin the model's
# behaviour; the tests assert them).
ROWS = ((36, 9), (5, 13), (26, 13), (3, 6), (36, 3), (2, 3))


def _prompt(seed: int, length: int) -> np.ndarray:
  p = np.random.default_rng(seed).integers(3, 250, 13)
  return p[p != EOS][:length]  # No EOS in a prompt (see block_reference).


PROMPTS = [_prompt(s, n) for s, n in ROWS]
LENGTHS = np.array([len(p) for p in PROMPTS])
PADDED = np.stack([np.pad(p, (0, 13 - len(p))) for p in PROMPTS]).astype(np.int32)


@pytest.fixture(scope='module')
def sharp():
  """The random 2-layer model of test_block_sampler (a scaled head: confident
  enough for the threshold rules; EOS a token it often predicts)."""
  cfg = presets.get_preset('tiny', n_layers=2, d_model=32, n_heads=4, d_ff=64,
                           max_len=64)
  cfg = dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, eos=EOS))
  params = model.init_params(cfg, jax.random.key(0))
  params['ff_out']['kernel'] = params['ff_out']['kernel'] * 60
  return cfg, params


@functools.partial(jax.jit, static_argnames=('cfg', 'block_length'))
def _block_causal_forward(params, x, *, cfg, block_length):
  return model.forward(params, x, config=cfg,
                       attention=attention.block_causal(block_length))


def _logits_fn(cfg, params, block_length=BLOCK):
  return lambda x: np.asarray(_block_causal_forward(
      params, jnp.asarray(x, jnp.int32), cfg=cfg, block_length=block_length))


def _run(cfg, params, sc, prompts=PADDED, lengths=LENGTHS) -> block.BlockSample:
  return jax.device_get(block.generate(params, prompts, jax.random.key(0), config=cfg,
                                       sampling=sc, prompt_lengths=lengths))


def _check_rows(out, want):
  """Each row: tokens, length and decision forwards equal the reference's
  (answer, forwards); EOS fills the rest."""
  for r, (answer, nfe) in enumerate(want):
    n = int(out.lengths[r])
    assert n == len(answer), (r, n, len(answer))
    np.testing.assert_array_equal(out.tokens[r, :n], answer)
    assert (out.tokens[r, n:] == EOS).all()
    assert int(out.decisions[r]) == nfe, (r, int(out.decisions[r]), nfe)


def _stop_block(out, sc) -> int:
  """The last canvas block the batch ran: the block of each row's last token."""
  k0, _, shift, _ = block.layout(LENGTHS, sc.block_length, sc.gen_length)
  return int(np.max((shift + LENGTHS + out.lengths - 1) // sc.block_length)), k0


def test_minimal_topk_caps_the_steps_before_the_schedule(sharp):
  """gen_length 6, blocks of 8, steps 8: LLaDA2 runs min(8, 6 // 1) = 6 steps
  committing [2, 2, 1, 1, 1, 1] (minimal_topk 2: 3 steps, [3, 3, 2]); the
  fixed rule (exactly n_s a step: the reference with a threshold no confidence
  passes) makes the same tokens in as many forwards, on prompts of 8 (a whole
  masked block) and 3 tokens."""
  cfg, params = sharp
  assert block.transfer_schedule(8, block.BlockSamplingConfig(
      gen_length=6, block_length=8, steps=8).decision_steps()).tolist() == [2, 2, 1, 1, 1, 1]
  prompts, lengths = PADDED[[1, 4], :8], np.array([8, 3])
  logits_fn = _logits_fn(cfg, params, 8)

  @jax.jit  # Both settings in one compile.
  def both(params):
    return [block.generate(params, prompts, jax.random.key(0), config=cfg,
                           prompt_lengths=lengths, sampling=block.BlockSamplingConfig(
                               gen_length=6, block_length=8, steps=8, parallel='fixed',
                               minimal_topk=m)) for m in (1, 2)]
  for m, out, quotas in zip((1, 2), jax.device_get(both(params)),
                            ([2, 2, 1, 1, 1, 1], [3, 3, 2])):
    want = []
    for r in range(2):
      schedules = []
      want.append(ref.llada2_generate(
          logits_fn, PADDED[[1, 4][r], :lengths[r]], gen_length=6, block_length=8,
          steps=8, threshold=2.0, eos_id=EOS, mask_id=MASK, minimal_topk=m,
          schedules=schedules))
      if r == 0:  # A whole masked block: the full schedule.
        assert schedules[:len(quotas)] == quotas, schedules
    _check_rows(out, want)
    assert int(out.decisions[0]) == len(quotas)  # Not 8 (one token a step).


@pytest.mark.parametrize('minimal_topk,eos_early_stop',
                         [(1, False), (1, True), (3, False), (3, True)])
def test_llada20_knobs_equal_the_reference(sharp, minimal_topk, eos_early_stop):
  """LLaDA2.0 (threshold 0.5, steps 4, blocks of 4): tokens, lengths and each
  row's decision forwards equal the reference's; with eos_early_stop a row
  ends in the middle of its EOS block (fewer forwards), and a row whose EOS
  lies in the last block's tail returns 11 tokens (gen_length 10), as the
  reference does; without it that row returns gen_length tokens."""
  cfg, params = sharp
  sc = block.BlockSamplingConfig(gen_length=GEN, block_length=BLOCK, steps=4,
                                 threshold=0.5, minimal_topk=minimal_topk,
                                 eos_early_stop=eos_early_stop)
  out = _run(cfg, params, sc)
  logits_fn = _logits_fn(cfg, params)
  want = [ref.llada2_generate(logits_fn, p, gen_length=GEN, block_length=BLOCK, steps=4,
                              threshold=0.5, eos_id=EOS, mask_id=MASK,
                              minimal_topk=minimal_topk, eos_early_stop=eos_early_stop)
          for p in PROMPTS]
  _check_rows(out, want)
  assert out.tokens.shape == (6, GEN + (BLOCK - 1 if eos_early_stop else 0))
  if minimal_topk == 1:
    assert out.lengths.tolist() == ([11, 8, 4, 10, 6, 1] if eos_early_stop else
                                    [10, 8, 4, 10, 6, 1])
    off = [ref.llada2_generate(logits_fn, p, gen_length=GEN, block_length=BLOCK,
                               steps=4, threshold=0.5, eos_id=EOS, mask_id=MASK)[1]
           for p in PROMPTS]
    fewer = np.asarray(off) - out.decisions
    assert (fewer > 0).any() == eos_early_stop and (fewer >= 0).all(), fewer


def test_forward_counts_with_and_without_the_cache(sharp):
  """eos_early_stop (rows end mid-block): the cache and the fused write change
  neither tokens nor decisions; every forward = the uncached run's steps + the
  prompt prefill + a block write after each block the batch ran but its last
  (none with the fused write, which folds them into the steps)."""
  cfg, params = sharp
  sc = block.BlockSamplingConfig(gen_length=GEN, block_length=BLOCK, steps=4,
                                 threshold=0.5, eos_early_stop=True)
  cached, uncached, fused = (_run(cfg, params, dataclasses.replace(sc, **kw)) for kw in
                             ({}, dict(cache=False), dict(fuse_write=True)))
  for out in (cached, fused):
    for name in ('tokens', 'lengths', 'decisions'):
      np.testing.assert_array_equal(getattr(out, name), getattr(uncached, name))
  assert int(uncached.forwards) == int(uncached.nfe) >= int(uncached.decisions.max())
  last, k0 = _stop_block(cached, sc)
  assert k0 > 0 and last > k0
  assert int(cached.forwards) == int(uncached.forwards) + 1 + (last - k0)
  assert int(cached.nfe) == int(cached.forwards) - 1
  assert int(fused.forwards) == int(uncached.forwards) + 1


@pytest.mark.parametrize('eos_early_stop', [False, True])
def test_llada21_editing_both_ways_equals_the_reference(sharp, eos_early_stop):
  """LLaDA2.1 editing (threshold 0.7, at least 1 a step, editing threshold
  0.3, 3 post steps): the same tokens either way (the answer is cut at its
  first EOS); without eos_early_stop rows keep decoding the blocks after their
  EOS, so rows 2 and 5 take more forwards, as the reference's do."""
  cfg, params = sharp
  sc = block.BlockSamplingConfig(gen_length=GEN, block_length=BLOCK, threshold=0.7,
                                 min_tokens=1, editing_threshold=0.3, max_post_steps=3,
                                 eos_early_stop=eos_early_stop, cache=False)
  out = _run(cfg, params, sc)
  logits_fn = _logits_fn(cfg, params)
  want = [ref.llada21_generate(logits_fn, p, gen_length=GEN, block_length=BLOCK,
                               threshold=0.7, editing_threshold=0.3, max_post_steps=3,
                               eos_id=EOS, mask_id=MASK, eos_early_stop=eos_early_stop)
          for p in PROMPTS]
  _check_rows(out, [(a, n) for a, n, _ in want])
  assert sum(e for _, _, e in want) > 0  # Editing happens.
  assert out.lengths.tolist()[2] == 7 and out.lengths.tolist()[5] == 2
  other = [ref.llada21_generate(logits_fn, p, gen_length=GEN, block_length=BLOCK,
                                threshold=0.7, editing_threshold=0.3, max_post_steps=3,
                                eos_id=EOS, mask_id=MASK,
                                eos_early_stop=not eos_early_stop)[1]
           for p in PROMPTS[2::3]]
  mine = out.decisions[2::3]
  assert ((mine < other) if eos_early_stop else (mine > other)).all(), (mine, other)


def test_bad_knobs_are_one_line_errors():
  with pytest.raises(ValueError, match='minimal_topk must be positive, got 0'):
    block.BlockSamplingConfig(minimal_topk=0).validate()
  with pytest.raises(ValueError, match='minimal_topk must be at most gen_length 6'):
    block.BlockSamplingConfig(gen_length=6, minimal_topk=7).validate()


def test_full_sequence_sampler_counts_each_rows_decisions(sharp):
  """The full-sequence sampler (threshold rule, blocks of 4): in a batch of
  two left-padded prompts, each row's decision forwards equal its forwards
  alone; every forward of the batch (`nfe`) is at least the larger."""
  cfg, params = sharp
  sc = gen.SamplingConfig(steps=8, gen_length=8, block_length=4, parallel='threshold',
                          threshold=0.6)
  prompts, mask = gen.pad_prompts([PROMPTS[1][:9], PROMPTS[3][:6]], cfg.ids.pad)

  @jax.jit  # The batch and each row alone in one compile.
  def runs(params):
    batch = gen.sample(params, prompts, jax.random.key(0), config=cfg, sampling=sc,
                       prompt_mask=mask)
    alone = [gen.sample(params, prompts[i:i + 1], jax.random.key(0), config=cfg,
                        sampling=sc, prompt_mask=mask[i:i + 1]) for i in range(2)]
    return batch, alone
  batch, alone = jax.device_get(runs(params))
  for i in range(2):
    np.testing.assert_array_equal(batch.tokens[i], alone[i].tokens[0])
    assert int(batch.decisions[i]) == int(alone[i].decisions[0]) == int(alone[i].nfe)
  assert int(batch.nfe) == int(batch.decisions.max())
  assert batch.decisions[0] != batch.decisions[1]  # The rows differ.


def test_the_knobs_keep_one_program_with_no_host_call_per_step(sharp):
  """eos_early_stop (a row's end mid-block) and minimal_topk add no host call:
  still one `while` loop, the host waits once, for the answer."""
  cfg, params = sharp
  sc = block.BlockSamplingConfig(gen_length=GEN, block_length=BLOCK, steps=4,
                                 threshold=0.5, minimal_topk=3, eos_early_stop=True)
  k0, n, shift, last = block.layout(LENGTHS, BLOCK, GEN)
  text = block._sample.lower(  # pylint: disable=protected-access
      params, PADDED, LENGTHS, shift, last, jax.random.key(0), block.BlockKnobs.of(sc),
      config=cfg, sc=sc.program_part(), k0=k0, n_blocks=n).as_text()
  assert 'stablehlo.while' in text
  for host in ('callback', 'outfeed', 'infeed', 'send', 'recv'):
    assert host not in text.lower(), host
