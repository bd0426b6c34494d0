"""Fuzzed inputs (Hypothesis, derandomized): tokenizers fed any text, random
bytes, lone surrogates, random ids and huge strings; the data pipeline fed
records of wrong types, invalid UTF-8, broken or pathological JSON, empty and
huge records. Nothing crashes, bad records are counted and skipped, and every
good record arrives intact."""

import json
import os
import tempfile

from hypothesis import HealthCheck, example, given, settings, strategies as st
import numpy as np
import pytest

from dllm_jax.data import pipeline, sources
from dllm_jax import tokenizers as tokenizer_lib



def fuzz(max_examples: int) -> settings:
  """Few, derandomized examples (stable in CI, within the time budget)."""
  return settings(max_examples=max_examples, deadline=None, derandomize=True,
                  database=None, suppress_health_check=[
                      HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


BYTE = tokenizer_lib.ByteTokenizer()
HUGE = 'ab\u00e9\u4e2d\U0001f600 \n' * 20_000  # 140k characters.
# Any code point, lone surrogates included (json.loads('"\\ud800"') makes those).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)


@pytest.fixture(scope='module')
def sp_tok(tmp_path_factory):
  from dllm_jax.tokenizers import sp as sp_tokenizer
  texts = ['hello world, the cat sat on the mat.\n', 'def f(x):\n  return x + 1\n'] * 20
  path = sp_tokenizer.train(texts, str(tmp_path_factory.mktemp('sp') / 'sp'),
                            vocab_size=300, hard_vocab_limit=False)
  return tokenizer_lib.make_tokenizer(f'sentencepiece:{path}')


@pytest.fixture(scope='module')
def hf_tok(tmp_path_factory):
  """A byte-level BPE tokenizer.json (any text round-trips) with LLaDA's specials."""
  from dllm_jax.tokenizers import hf as hf_tokenizer
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = sorted(set(hf_tokenizer.LLADA_SPECIAL_TOKENS.values()))
  tok.train_from_iterator(['hello world', 'the cat sat'], trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = tmp_path_factory.mktemp('hf')
  tok.save(str(path / 'tokenizer.json'))
  return tokenizer_lib.make_tokenizer(f'hf:{path}')


def _round_trips_or_refuses(tok, text):
  """Valid Unicode round-trips (BOS/EOS added and dropped); a lone surrogate
  is a UnicodeEncodeError (a ValueError), which the pipeline counts and skips."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    with pytest.raises(UnicodeEncodeError):
      tok.encode(text)
    return
  ids = tok.encode(text, add_bos=True, add_eos=True)
  assert ids.dtype == np.int32 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  specials = [v for k, v in getattr(tok, 'special_tokens', {}).items()]
  if not any(s in text for s in specials):  # Special-token text becomes the token.
    assert tok.decode(ids) == text


@fuzz(100)
@given(text=ANY_TEXT)
@example(text='')
@example(text=HUGE)
def test_byte_tokenizer_round_trips_any_text(text):
  _round_trips_or_refuses(BYTE, text)


@fuzz(60)
@given(data=st.binary(max_size=200),
       ids=st.lists(st.integers(-2**31, 2**31 - 1), max_size=50))
def test_byte_tokenizer_takes_random_bytes_and_decodes_any_ids(data, ids):
  assert BYTE.decode(BYTE.encode(data)) == data.decode('utf-8', errors='replace')
  assert isinstance(BYTE.decode(np.asarray(ids, np.int64)), str)


@fuzz(60)
@given(text=ANY_TEXT, ids=st.lists(st.integers(-5, 400), max_size=40))
@example(text='', ids=[])
@example(text=HUGE, ids=list(range(300)))
def test_sentencepiece_round_trips_any_text_and_decodes_any_ids(sp_tok, text, ids):
  _round_trips_or_refuses(sp_tok, text)
  assert isinstance(sp_tok.decode(ids), str)


@fuzz(40)
@given(text=ANY_TEXT, ids=st.lists(st.integers(0, 400), max_size=40))
@example(text='', ids=[])
@example(text=HUGE, ids=list(range(300)))
def test_hf_tokenizer_round_trips_any_text_and_decodes_any_ids(hf_tok, text, ids):
  _round_trips_or_refuses(hf_tok, text)
  assert isinstance(hf_tok.decode(ids), str)


# --- the data pipeline --------------------------------------------------------


def _parses_as_text_record(raw: bytes) -> bool:
  try:
    value = json.loads(raw)
  except (ValueError, RecursionError):
    return False
  return isinstance(value, dict) and isinstance(value.get('text'), str)


_WRONG_TYPES = st.one_of(st.integers(), st.floats(allow_nan=False), st.none(),
                         st.booleans(), st.lists(st.integers(), max_size=3),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
# (is it good, the raw record); good texts fit a row (at most 60 x 4 bytes + 2).
RECORDS = st.one_of(
    st.text(max_size=60).map(lambda t: (t, json.dumps({'text': t}).encode())),
    st.text(max_size=60).map(
        lambda t: (t, json.dumps({'text': t}, ensure_ascii=False).encode())),
    _WRONG_TYPES.map(lambda v: (None, json.dumps({'text': v}).encode())),
    st.sampled_from([b'{"other": "x"}', b'[1, 2]', b'3', b'"text"', b'null',
                     b'{"text": "a\\ud800b"}',  # A lone surrogate.
                     b'{"text": "\xff\xfe"}',  # Invalid UTF-8.
                     b'[' * 50_000,  # Nested past the recursion limit.
                     b'{"text": ' + b'7' * 5_000 + b'}',  # Over 4300 digits.
                     b'{"text": "' + b'x' * 300_000]).map(lambda r: (None, r)),
    st.binary(min_size=1, max_size=60).filter(
        lambda b: b'\n' not in b and b.strip() and not _parses_as_text_record(b)
    ).map(lambda r: (None, r)),
)


def _documents(ds) -> list[str]:
  """The documents of first_fit rows (one row per batch), BOS / EOS dropped."""
  docs = []
  for batch in ds:
    tokens, segments = batch['tokens'][0], batch['segment_ids'][0]
    for s in np.unique(segments[segments > 0]):
      ids = tokens[segments == s]
      assert ids[0] == BYTE.bos_id and ids[-1] == BYTE.eos_id
      docs.append(bytes(ids[1:-1].astype(np.uint8)).decode('utf-8'))
  return docs


def _write(records, kind, where):
  if kind == 'jsonl':
    path = os.path.join(where, 'data.jsonl')
    with open(path, 'wb') as f:
      f.writelines(raw + b'\n' for _, raw in records)
    return f'jsonl:{path}'
  from array_record.python import array_record_module
  path = os.path.join(where, 'data.array_record')
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for _, raw in records:
    writer.write(raw)
  writer.close()
  return f'array_record:{path}'


@fuzz(12)
@given(records=st.lists(RECORDS, min_size=1, max_size=10))
@pytest.mark.parametrize('kind', ['jsonl', 'array_record'])
def test_pipeline_counts_and_skips_bad_records_and_keeps_every_good_one(kind, records):
  with tempfile.TemporaryDirectory() as where:
    spec = _write(records, kind, where)
    skipped = pipeline.COUNTS.get('skipped records', 0)
    ds = pipeline.pretrain_dataset(spec, BYTE, seq_len=256, batch_size=1, seed=0,
                                   packing='first_fit', num_epochs=1)
    docs = _documents(ds)
  good = [text for text, _ in records if text is not None]
  assert sorted(docs) == sorted(good)
  assert pipeline.COUNTS.get('skipped records', 0) - skipped == len(records) - len(good)


@fuzz(10)
@given(files=st.lists(st.one_of(st.text(max_size=40).map(str.encode),
                                st.binary(max_size=40)), min_size=1, max_size=6))
def test_text_files_that_are_not_utf8_are_skipped(files):
  with tempfile.TemporaryDirectory() as where:
    for i, data in enumerate(files):
      with open(os.path.join(where, f'{i}.txt'), 'wb') as f:
        f.write(data)
    skipped = pipeline.COUNTS.get('skipped records', 0)
    docs = _documents(pipeline.pretrain_dataset(
        f'text:{where}/*.txt', BYTE, seq_len=256, batch_size=1, seed=0,
        packing='first_fit', num_epochs=1, record_format='text'))
  good = []
  for data in files:
    try:
      good.append(data.decode('utf-8'))
    except UnicodeDecodeError:
      pass
  assert sorted(docs) == sorted(good)
  assert pipeline.COUNTS.get('skipped records', 0) - skipped == len(files) - len(good)


_MESSAGE = st.fixed_dictionaries({'role': st.one_of(st.sampled_from(['user', 'assistant']),
                                                    _WRONG_TYPES),
                                  'content': st.one_of(ANY_TEXT, _WRONG_TYPES)})
SFT_RECORDS = st.one_of(
    st.fixed_dictionaries({'prompt': st.one_of(ANY_TEXT, _WRONG_TYPES),
                           'response': st.one_of(ANY_TEXT, _WRONG_TYPES)}),
    st.fixed_dictionaries({'messages': st.one_of(st.lists(_MESSAGE, max_size=3),
                                                 _WRONG_TYPES)}),
    _WRONG_TYPES)


@fuzz(12)
@given(records=st.lists(SFT_RECORDS, min_size=1, max_size=8))
def test_sft_pipeline_turns_every_record_into_a_row_or_a_counted_skip(records):
  with tempfile.TemporaryDirectory() as where:
    path = os.path.join(where, 'sft.jsonl')
    with open(path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
    skipped = pipeline.COUNTS.get('skipped records', 0)
    rows = list(pipeline.sft_dataset(f'jsonl:{path}', BYTE, seq_len=96, batch_size=1,
                                     seed=0, num_epochs=1))
  for row in rows:
    assert row['tokens'].shape == (1, 96) and 0 < row['prompt_lengths'][0] < 96
  assert len(rows) + pipeline.COUNTS.get('skipped records', 0) - skipped == len(records)


def test_decode_record_refuses_pathological_json_in_one_line():
  for raw in (b'[' * 50_000, b'{"text": ' + b'7' * 5_000 + b'}', b'\xff\xfe{}'):
    with pytest.raises(sources.RecordError) as e:
      sources.decode_record(raw)
    assert '\n' not in str(e.value) and len(str(e.value)) < 300


def test_a_huge_record_arrives_whole_between_bad_ones(tmp_path):
  huge = 'x\u00e9\u4e2d ' * 30_000  # 240k bytes: split into row-sized pieces.
  with open(tmp_path / 'data.jsonl', 'w') as f:
    f.writelines(line + '\n' for line in [
        json.dumps({'text': huge}), '{"text": 3}', json.dumps({'text': ''}),
        '{"text": "a\\ud800"}', json.dumps({'text': 'small'})])
  skipped = pipeline.COUNTS.get('skipped records', 0)
  ds = pipeline.pretrain_dataset(f'jsonl:{tmp_path}/data.jsonl', BYTE, seq_len=256,
                                 batch_size=1, seed=0, packing='first_fit',
                                 num_epochs=1)
  # One packing bin: the pieces arrive in order; rejoined at BOS / EOS.
  stream = np.concatenate([b['tokens'][0][b['segment_ids'][0] > 0] for b in ds])
  bos, eos = np.flatnonzero(stream == BYTE.bos_id), np.flatnonzero(stream == BYTE.eos_id)
  docs = [bytes(stream[b + 1:e].astype(np.uint8)).decode() for b, e in zip(bos, eos)]
  assert sorted(docs) == sorted([huge, '', 'small'])
  assert pipeline.COUNTS.get('skipped records', 0) - skipped == 2
