"""Byte tokenizer and the built-in stdlib corpus pipeline."""

import numpy as np
import pytest

from dllm_jax import presets
from dllm_jax.data import stdlib_corpus
from dllm_jax.data.tokenizer import ByteTokenizer, from_dict


def test_byte_tokenizer_round_trip_and_specials():
  tok = ByteTokenizer()
  ids = tok.encode('déf f(x):\n  return x', add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids) == 'déf f(x):\n  return x'
  assert tok.decode([ord('a'), tok.mask_id, ord('b'), tok.eos_id, ord('c')]) == 'ab'
  assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.eot_id, tok.mask_id}) == 5
  assert from_dict(tok.to_dict()) == tok


def test_byte_presets_agree_with_the_byte_tokenizer():
  tok = ByteTokenizer()
  for name in ('tiny', 'small'):
    cfg = presets.get_preset(name)
    assert cfg.vocab_size >= tok.vocab_size
    assert (cfg.mask_id, cfg.bos_id, cfg.eos_id, cfg.pad_id) == (
        tok.mask_id, tok.bos_id, tok.eos_id, tok.pad_id)


def test_splits_are_disjoint_and_nonempty():
  train = set(stdlib_corpus.stdlib_files('train'))
  val = set(stdlib_corpus.stdlib_files('validation'))
  assert len(train) > 500 and len(val) > 5
  assert not train & val
  assert not any('site-packages' in f for f in train)
  with pytest.raises(ValueError, match="unknown split 'test'"):
    stdlib_corpus.stdlib_files('test')


def test_pipeline_rows_carry_segments_and_positions():
  ds = stdlib_corpus.pretrain_dataset(seq_len=64, batch_size=4, seed=0,
                                      tokenizer=ByteTokenizer())
  batch = next(iter(ds))
  assert set(batch) == {'tokens', 'segment_ids', 'positions'}
  for v in batch.values():
    assert v.shape == (4, 64) and v.dtype == np.int32
  tok = ByteTokenizer()
  # Positions restart at 0 exactly where a new document (segment) starts.
  seg, pos, tokens = batch['segment_ids'], batch['positions'], batch['tokens']
  new_doc = np.concatenate([np.ones((4, 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
  np.testing.assert_array_equal(pos == 0, new_doc)
  # Each document starts with BOS unless it continues from the previous row.
  starts = tokens[new_doc[:, 1:].nonzero()[0], new_doc[:, 1:].nonzero()[1] + 1]
  assert np.all(starts == tok.bos_id)


def test_pipeline_is_deterministic_and_resumes_exactly():
  make = lambda: iter(stdlib_corpus.pretrain_dataset(
      seq_len=32, batch_size=2, seed=3, tokenizer=ByteTokenizer()))
  a = make()
  first = [next(a) for _ in range(5)]
  state = a.get_state()
  rest = [next(a)['tokens'] for _ in range(5)]
  b = make()
  for want in first:
    np.testing.assert_array_equal(next(b)['tokens'], want['tokens'])
  c = make()
  c.set_state(state)
  for want in rest:
    np.testing.assert_array_equal(next(c)['tokens'], want)


def test_process_shards_are_disjoint():
  files = stdlib_corpus.stdlib_files('train')
  shards = [files[i::2] for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert len(shards[0]) + len(shards[1]) == len(files)
