"""serving.Engine: batching does not change answers; buckets; HF directories;
the server's block-by-block stepper equals the one-call sampler."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from dllm_jax import ByteTokenizer, SamplingConfig, generate
from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.tokenizers import SpecialIds
from dllm_jax.serving import Engine, Request
from dllm_jax.serving import engine as engine_lib
from dllm_jax.serving import stepper
from tests import support

CFG = presets.get_preset('tiny', d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64)


@pytest.fixture(scope='module')
def engine():
  params = jax.jit(model.init_params, static_argnums=0)(CFG, jax.random.key(0))
  return Engine(params, CFG, ByteTokenizer(), batch_sizes=(4,),
                prompt_buckets=(16,))


@pytest.fixture(scope='module')
def sharp(engine):
  """The model with its head scaled x20: its answers change with the
  temperature, threshold and CFG scale (the plain random model's hardly do)."""
  head = engine.params['ff_out']['kernel'] * 20
  params = {**engine.params, 'ff_out': {**engine.params['ff_out'], 'kernel': head}}
  return Engine(params, CFG, ByteTokenizer(), batch_sizes=(4,), prompt_buckets=(16,))


def test_a_request_alone_equals_it_inside_a_batch(engine):
  """Greedy and sampled requests, of different lengths, in one call: each row
  has its own key, so its batch-mates do not change its answer."""
  greedy = SamplingConfig(steps=4, gen_length=8, block_length=4)
  hot = dataclasses.replace(greedy, temperature=0.8)
  reqs = [Request('hello', hot, seed=3), Request('a longer prompt', greedy, seed=5),
          Request([257, 1, 2], hot, seed=7), Request('hello', hot, seed=4),
          Request('hello', greedy, seed=1), Request('abc', greedy, seed=2)]
  batch = engine.generate(reqs)
  assert engine.num_compiled == 2  # Greedy and sampled (one prompt and batch bucket).
  for r, b in zip(reqs, batch):
    alone = engine.generate([r])[0]
    np.testing.assert_array_equal(b.tokens, alone.tokens)
    np.testing.assert_array_equal(b.commit_step, alone.commit_step)
    assert b.text == alone.text and b.prompt_tokens == len(engine.encode(r.prompt))
  assert not np.array_equal(batch[0].tokens, batch[3].tokens)  # Seeds matter.
  ref = generate(engine.params, engine.encode('hello')[None], jax.random.key(3),
                 config=CFG, sampling=hot)  # Alone, a request is `generate`.
  np.testing.assert_array_equal(np.asarray(ref)[0, -8:], batch[0].tokens)


def test_requests_differing_in_floats_share_one_program(sharp):
  """Temperature, threshold and CFG scale are traced one per row: requests
  that differ only there run as one batch of one compiled program (greedy
  and sampled rows apart), each answering what `generate` gives it alone
  with its own floats (which change the answers: not the program's
  placeholders)."""
  engine = sharp
  base = SamplingConfig(steps=4, gen_length=8, block_length=4, parallel='threshold',
                        cfg_scale=0.5)
  floats = [(0.8, 0.5, 0.5), (1.5, 0.9, 1.0), (0.0, 0.3, 0.5), (0.0, 0.95, 2.0)]
  reqs = [Request(p, dataclasses.replace(base, temperature=t, threshold=h, cfg_scale=c),
                  seed=i) for i, (p, (t, h, c)) in enumerate(zip(
                      ['hello', 'world', 'world', 'hello'], floats))]  # One shape: one
  # compile of the reference below (its floats are traced too).
  before = engine.num_compiled
  batch = engine.generate(reqs)
  assert engine.num_compiled == before + 2  # Sampled and greedy.
  run = lambda r, sc: np.asarray(generate(
      engine.params, engine.encode(r.prompt)[None], jax.random.key(r.seed), config=CFG,
      sampling=sc))[0, -8:]
  changed = []
  for r, b in zip(reqs, batch):
    np.testing.assert_array_equal(run(r, r.sampling), b.tokens)
    changed.append(not np.array_equal(run(r, r.sampling.program_part()), b.tokens))
  assert any(changed[:2]) and any(changed[2:]), changed  # Sampled, greedy.


def test_buckets_and_bad_requests(engine):
  assert engine_lib.powers_of_two(24) == (1, 2, 4, 8, 16, 24)
  assert [engine.batch_bucket(n) for n in (1, 3, 4)] == [4, 4, 4]
  assert engine.prompt_bucket(5, 8) == 16 and engine.prompt_bucket(20, 8) == 56
  assert engine.prompt_bucket(60, 4) == 60
  sc = SamplingConfig(steps=4, gen_length=8, block_length=4)
  n = engine.num_compiled
  assert engine.warmup([(sc, 3, 1)]) == 0  # Compiled by the first test.
  assert engine.warmup([(dataclasses.replace(sc, threshold=0.3), 3, 1)]) == 0
  assert engine.num_compiled == n
  with pytest.raises(ValueError, match='request 1: prompt length 60'):
    engine.generate([Request('x', sc), Request('x' * 59, sc)])
  with pytest.raises(ValueError, match='seed must be in'):
    engine.generate([Request('x', sc, seed=-1)])


def assert_same(a, b):
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.commit_step, b.commit_step)
  assert a.nfe == b.nfe and a.text == b.text


def test_rows_stepped_block_by_block_equal_the_one_call_sampler(sharp):
  """Rows joining at different block boundaries (one into a row another left),
  with different temperatures, answer token for token what `Engine.generate`
  runs in one call."""
  engine = sharp
  hot = SamplingConfig(steps=4, gen_length=8, block_length=4, temperature=0.8)
  arrivals = [(0, Request('hello', hot, seed=3)),  # Temperatures differ: one batch.
              (1, Request('a longer prompt', dataclasses.replace(hot, temperature=1.5),
                          seed=5)),
              (2, Request([257, 1, 2], dataclasses.replace(hot, temperature=0.3), seed=7))]
  for (_, r), got in zip(arrivals, support.step_rows(engine, arrivals)):
    assert_same(got, engine.generate([r])[0])


@pytest.mark.slow
def test_block_steps_equal_one_call_with_caches_rules_and_repacking():
  params = jax.jit(model.init_params, static_argnums=0)(CFG, jax.random.key(0))
  eng = Engine(params, CFG, ByteTokenizer(), batch_sizes=(1, 2, 4), prompt_buckets=(16,))
  base = SamplingConfig(steps=8, gen_length=8, block_length=2, temperature=0.7)
  for sc in (base, dataclasses.replace(base, cache='dual', parallel='threshold',
                                       threshold=0.5, steps=4),
             dataclasses.replace(base, cfg_scale=1.5, remasking='random')):
    arrivals = [(0, Request('hello', sc, seed=1)), (1, Request('abc', sc, seed=2)),
                (1, Request('a longer prompt', sc, seed=3)), (3, Request('x', sc, seed=4))]
    for (_, r), got in zip(arrivals, support.step_rows(eng, arrivals)):
      assert_same(got, eng.generate([r])[0])
  assert stepper.steppable(dataclasses.replace(base, cache='prefix'))


def test_prefix_cache_rows_step_with_a_program_per_block_index(engine):
  """The prefix cache's window width depends on the block: its rows step
  with one program per block index, joining at different blocks, and equal
  the one-call sampler."""
  sc = SamplingConfig(steps=2, gen_length=4, block_length=2, cache='prefix')
  arrivals = [(0, Request('hello', sc, seed=1)), (1, Request('abc', sc, seed=2))]
  for (_, r), got in zip(arrivals, support.step_rows(engine, arrivals)):
    assert_same(got, engine.generate([r])[0])


def test_engine_from_a_hugging_face_directory(tmp_path):
  """config.json + safetensors + tokenizer.json in the LLaDA layout."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from dllm_jax.tokenizers.hf import LLADA_SPECIAL_TOKENS
  from dllm_jax.interop import llada_hf
  words = ['hello', 'world', '<unk>'] + sorted(set(LLADA_SPECIAL_TOKENS.values()))
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                   unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(words[3:])
  tok.save(str(tmp_path / 'tokenizer.json'))
  ids = {r: words.index(t) for r, t in LLADA_SPECIAL_TOKENS.items()}
  cfg = dataclasses.replace(CFG, vocab_size=64, ids=SpecialIds(**ids))
  params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.key(1))
  llada_hf.save_params(params, cfg, str(tmp_path))
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'model_type': 'llada', 'd_model': 32, 'n_layers': 1, 'n_heads': 2,
               'n_kv_heads': 2, 'mlp_hidden_size': 64, 'max_sequence_length': 64,
               'vocab_size': 64, 'rope_theta': cfg.rope_theta,
               'rms_norm_eps': cfg.norm_eps}, f)
  eng = Engine.from_hf_dir(str(tmp_path))
  assert eng.config == cfg and eng.name == os.path.basename(tmp_path)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, eng.params)  # save_params writes the params' own dtype.
  np.testing.assert_array_equal(eng.encode('hello world'), [ids['bos'], 0, 1])
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'model_type': 'gpt2'}, f)
  with pytest.raises(ValueError, match="model family 'gpt2' is not supported"):
    Engine.from_hf_dir(str(tmp_path))


def test_compiled_programs_are_bounded_least_recently_used_first(engine):
  small = Engine(engine.params, CFG, ByteTokenizer(), max_compiled=2)
  builds = []
  get = lambda key: small.compile_once(key, lambda: builds.append(key) or key)
  assert [get(k) for k in 'abac'] == list('abac')  # 'b' is now least recently used.
  assert small.num_compiled == 2 and small.programs.dropped == 1 and builds == list('abc')
  get('a')
  assert builds == list('abc')  # Kept ...
  get('b')
  assert builds == list('abcb') and small.programs.compiles == 4  # Dropped, built again.
  with pytest.raises(ValueError, match='max_compiled=0 must be at least 1'):
    Engine(engine.params, CFG, ByteTokenizer(), max_compiled=0)


def test_an_engine_is_freed_with_its_last_reference(engine):
  """Nothing the stepper caches keeps an engine (and its parameters) alive."""
  import gc  # pylint: disable=g-import-not-at-top
  import weakref  # pylint: disable=g-import-not-at-top
  e = Engine(engine.params, CFG, ByteTokenizer(), batch_sizes=(4,), prompt_buckets=(16,))
  sc = e.resolve(SamplingConfig(steps=4, gen_length=8, block_length=4))
  stepper.RowBatch(e, sc, e.bucket(3, sc), 4)
  alive = weakref.ref(e)
  del e
  gc.collect()
  assert alive() is None
