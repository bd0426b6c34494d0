"""Data: sources (TFDS, ArrayRecord, text, JSONL), tokenizers, packing, SFT rows,
exact resume (workers off and on), process sharding and bad input."""

import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dllm_jax import models as presets
from dllm_jax.data import convert, pipeline, sft, sources, stdlib_corpus, stdlib_tfds
from dllm_jax.data import synthetic_sft
from dllm_jax import tokenizers as tokenizer_lib
from dllm_jax.tokenizers import ByteTokenizer, from_dict

TOK = ByteTokenizer()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """The built-in corpus prepared once (offline) into a fresh TFDS data dir."""
  d = str(tmp_path_factory.mktemp('tfds'))
  stdlib_tfds.prepare(d)
  return d


def _write_docs(path, n, length=None):
  """JSONL of n documents 'doc-i ...' (numbered, so tests can see which)."""
  with open(path, 'w') as f:
    for i in range(n):
      f.write(json.dumps({'text': f'doc-{i:04d} ' + 'x' * (length or (i % 7) * 5)})
              + '\n')
  return path


def _doc_ids(batch):
  text = b''.join(bytes([t]) if t < 256 else b'|' for t in batch['tokens'].reshape(-1))
  return {int(m[4:8]) for m in text.decode().split('|') if m.startswith('doc-')}


def test_byte_tokenizer_round_trip_and_specials():
  ids = TOK.encode('déf f(x):\n  return x', add_bos=True, add_eos=True)
  assert ids[0] == TOK.bos_id and ids[-1] == TOK.eos_id
  assert TOK.decode(ids) == 'déf f(x):\n  return x'
  assert TOK.decode([ord('a'), TOK.mask_id, ord('b'), TOK.eos_id, ord('c')]) == 'ab'
  assert len({TOK.pad_id, TOK.bos_id, TOK.eos_id, TOK.eot_id, TOK.mask_id}) == 5
  assert from_dict(TOK.to_dict()) == TOK
  assert tokenizer_lib.make_tokenizer('byte') == TOK
  with pytest.raises(ValueError, match="unknown tokenizer 'bpe:x'"):
    tokenizer_lib.make_tokenizer('bpe:x')


def test_byte_presets_agree_with_the_byte_tokenizer():
  for name in ('tiny', 'small'):
    cfg = presets.get_preset(name)
    assert cfg.vocab_size >= TOK.vocab_size
    assert (cfg.mask_id, cfg.bos_id, cfg.eos_id, cfg.pad_id) == (
        TOK.mask_id, TOK.bos_id, TOK.eos_id, TOK.pad_id)


def test_splits_are_disjoint_and_nonempty():
  train = set(stdlib_corpus.stdlib_files('train'))
  val = set(stdlib_corpus.stdlib_files('validation'))
  assert len(train) > 500 and len(val) > 5
  assert not train & val
  assert not any('site-packages' in f for f in train)
  with pytest.raises(ValueError, match="unknown split 'test'"):
    stdlib_corpus.stdlib_files('test')


def test_builtin_corpus_is_a_tfds_dataset_read_without_tensorflow(data_dir):
  # The same call a user's own prepared TFDS dataset goes through.
  src = tfds.data_source(f'{stdlib_tfds.NAME}/{stdlib_tfds.CONFIG}', split='train',
                         data_dir=data_dir)
  assert len(src) == len(stdlib_corpus.stdlib_files('train'))
  rec = sources.decode_record(src[0])
  root = stdlib_corpus.stdlib_dir()
  with open(os.path.join(root, rec['path']), 'rb') as f:
    assert rec['text'] == f.read().decode('utf-8', errors='replace')
  via_spec = sources.open_source(f'tfds:{stdlib_tfds.NAME}', split='validation',
                                 data_dir=data_dir)
  assert len(via_spec) == len(stdlib_corpus.stdlib_files('validation'))
  stdlib_tfds.prepare(data_dir)  # Prepared once: a second call is a no-op.


def test_stream_packing_gives_the_concat_rows_without_boundaries(data_dir):
  kw = dict(seq_len=64, batch_size=4, seed=0, data_dir=data_dir)
  stream = next(iter(pipeline.pretrain_dataset('stdlib', TOK, packing='stream', **kw)))
  concat = next(iter(pipeline.pretrain_dataset('stdlib', TOK, packing='concat', **kw)))
  assert set(stream) == {'tokens'} and stream['tokens'].dtype == np.int32
  np.testing.assert_array_equal(stream['tokens'], concat['tokens'])


@pytest.mark.parametrize('packing', ['concat', 'first_fit'])
def test_packed_rows_carry_segments_and_positions(data_dir, packing):
  ds = pipeline.pretrain_dataset('stdlib', TOK, seq_len=64, batch_size=4, seed=0,
                                 data_dir=data_dir, packing=packing)
  batch = next(iter(ds))
  assert set(batch) == {'tokens', 'segment_ids', 'positions'}
  for v in batch.values():
    assert v.shape == (4, 64) and v.dtype == np.int32
  seg, pos, tokens = batch['segment_ids'], batch['positions'], batch['tokens']
  real = seg > 0
  # Positions restart at 0 exactly where a new segment starts.
  new_seg = np.concatenate([np.ones((4, 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
  np.testing.assert_array_equal((pos == 0) & real, new_seg & real)
  assert np.all(np.diff(pos, axis=1)[~new_seg[:, 1:] & real[:, 1:]] == 1)
  # Padding (first_fit only) is segment 0 and the pad token.
  assert np.all(tokens[~real] == TOK.pad_id)
  if packing == 'concat':
    assert real.all()


def test_first_fit_keeps_short_documents_whole(tmp_path):
  src = _write_docs(tmp_path / 'd.jsonl', 50)
  ds = pipeline.pretrain_dataset(f'jsonl:{src}', TOK, seq_len=64, batch_size=4,
                                 seed=0, packing='first_fit', num_epochs=1)
  seen = []
  for batch in ds:
    for row_tok, row_seg in zip(batch['tokens'], batch['segment_ids']):
      for s in set(row_seg[row_seg > 0].tolist()):
        doc = row_tok[row_seg == s]
        assert doc[0] == TOK.bos_id and doc[-1] == TOK.eos_id  # Whole document.
        seen.append(int(TOK.decode(doc)[4:8]))
  assert len(seen) == len(set(seen)) and len(seen) >= 40


def test_long_documents_are_split_and_logged(tmp_path, caplog):
  src = _write_docs(tmp_path / 'd.jsonl', 3, length=200)
  caplog.set_level(logging.WARNING, logger='dllm_jax.data')
  ds = pipeline.pretrain_dataset(f'jsonl:{src}', TOK, seq_len=64, batch_size=1,
                                 seed=0, packing='first_fit', num_epochs=1)
  rows = [b['tokens'][0] for b in ds]
  assert len(rows) == 3 * 4  # 1 + 210 + 1 tokens -> 4 rows each.
  assert 'longer than a row of 64: split into 4 pieces' in caplog.text


@pytest.mark.parametrize('num_workers', [0, 2])
def test_pipeline_is_deterministic_and_resumes_exactly(data_dir, num_workers):
  make = lambda: iter(pipeline.pretrain_dataset(
      'stdlib', TOK, seq_len=32, batch_size=2, seed=3, data_dir=data_dir,
      num_workers=num_workers))
  a = make()
  first = [next(a)['tokens'] for _ in range(5)]
  state = a.get_state()
  rest = [next(a)['tokens'] for _ in range(5)]
  b = make()
  for want in first:
    np.testing.assert_array_equal(next(b)['tokens'], want)
  c = make()
  c.set_state(state)
  for want in rest:
    np.testing.assert_array_equal(next(c)['tokens'], want)


def test_epochs_are_reshuffled(tmp_path):
  src = _write_docs(tmp_path / 'd.jsonl', 8, length=60)  # One row per document.
  ds = pipeline.pretrain_dataset(f'jsonl:{src}', TOK, seq_len=128, batch_size=1,
                                 seed=0, packing='first_fit', num_epochs=2)
  order = [min(_doc_ids(b)) for b in ds]
  assert sorted(order[:8]) == sorted(order[8:]) == list(range(8))
  assert order[:8] != order[8:]


def test_process_shards_are_disjoint_and_cover_the_data(tmp_path):
  src = _write_docs(tmp_path / 'd.jsonl', 40, length=60)
  shards = []
  for i in range(2):
    ds = pipeline.pretrain_dataset(f'jsonl:{src}', TOK, seq_len=128, batch_size=1,
                                   seed=0, packing='first_fit', num_epochs=1,
                                   shard_index=i, shard_count=2)
    shards.append(set().union(*(_doc_ids(b) for b in ds)))
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(40))


def test_text_jsonl_and_array_record_sources_agree(tmp_path):
  docs = [f'document {i}: ' + 'word ' * i for i in range(12)]
  os.makedirs(tmp_path / 'txt')
  for i, d in enumerate(docs):
    (tmp_path / 'txt' / f'{i:02d}.txt').write_text(d)
  with open(tmp_path / 'docs.jsonl', 'w') as f:
    f.writelines(json.dumps({'text': d}) + '\n' for d in docs)
  out = convert.convert(f'jsonl:{tmp_path}/docs.jsonl', str(tmp_path / 'ar' / 'train'),
                        num_shards=3)
  assert out['records'] == 12 and len(out['files']) == 3
  convert.convert(f'text:{tmp_path}/txt/*.txt', str(tmp_path / 'ar_txt' / 'train'),
                  num_shards=2)
  specs = [f'text:{tmp_path}/txt/*.txt', f'jsonl:{tmp_path}/docs.jsonl',
           f'array_record:{tmp_path}/ar/{{split}}-*.array_record',
           f'array_record:{tmp_path}/ar_txt/train-*.array_record']
  for spec in specs:
    src = sources.open_source(spec)
    got = sorted(sources.decode_record(src[i], 'text' if spec.startswith('text')
                                       else 'json')['text'] for i in range(len(src)))
    assert got == sorted(docs), spec


def test_sentencepiece_tokenizer_trains_round_trips_and_checks_vocab(tmp_path):
  from dllm_jax.tokenizers import sp as sp_tokenizer
  texts = [open(p).read() for p in stdlib_corpus.stdlib_files('validation')[:10]]
  path = sp_tokenizer.train(texts, str(tmp_path / 'sp'), vocab_size=600)
  tok = tokenizer_lib.make_tokenizer(f'sentencepiece:{path}')
  assert tok.vocab_size == 600
  ids = {tok.mask_id, tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id}
  assert len(ids) == 5 and max(ids) < 600
  text = 'def f(x):\n    return x  # é\n'
  enc = tok.encode(text, add_bos=True, add_eos=True)
  assert enc[0] == tok.bos_id and enc[-1] == tok.eos_id
  assert tok.decode(enc) == text
  assert from_dict(json.loads(json.dumps(tok.to_dict()))).vocab_size == 600
  # A retrained model of another size no longer matches a checkpoint's record.
  other = sp_tokenizer.train(texts, str(tmp_path / 'sp'), vocab_size=640)
  assert other == path
  with pytest.raises(ValueError, match='does not match the checkpoint.*vocab_size 600 '
                     '-> 640'):
    from_dict(tok.to_dict())


def test_tokenizer_without_a_mask_token_is_a_clear_error(tmp_path):
  import sentencepiece as spm
  from dllm_jax.tokenizers import sp as sp_tokenizer
  texts = ['hello world\n', 'some more text here\n'] * 50
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts),
                                 model_prefix=str(tmp_path / 'plain'), vocab_size=40,
                                 hard_vocab_limit=False,
                                 minloglevel=2)
  with pytest.raises(ValueError, match="no mask token '<mask>'.*launch.train_tokenizer"):
    sp_tokenizer.SentencePieceTokenizer(str(tmp_path / 'plain.model'))


def test_sft_rows_follow_the_llada_format():
  row = sft.sft_row(TOK, [{'role': 'user', 'content': 'reverse abc'}], 'cba', 48)
  tokens, n_prompt = row['tokens'], int(row['prompt_lengths'])
  prompt = tokens[:n_prompt]
  assert prompt[0] == TOK.bos_id and TOK.decode(prompt, stop_at_eos=False) == (
      'user: reverse abcassistant: ')
  assert list(prompt).count(TOK.eot_id) == 1
  answer = tokens[n_prompt:]
  assert TOK.decode(answer[:3]) == 'cba' and answer[3] == TOK.eot_id
  assert np.all(answer[4:] == TOK.eos_id)  # EOS padding is part of the answer.
  with pytest.raises(sources.RecordError, match='does not fit a row of 16'):
    sft.sft_row(TOK, [{'role': 'user', 'content': 'reverse abc'}], 'cba', 16)


def test_sft_dataset_reads_both_record_shapes_and_skips_bad_ones(tmp_path, caplog):
  paths = synthetic_sft.write(str(tmp_path), num_train=200, num_validation=10)
  with open(paths['train'], 'a') as f:
    f.write('{"prompt": "no answer"}\n{not json\n')
    f.write(json.dumps({'prompt': 'long', 'response': 'y' * 100}) + '\n')
  caplog.set_level(logging.WARNING, logger='dllm_jax.data')
  ds = pipeline.sft_dataset(f'jsonl:{tmp_path}/{{split}}.jsonl', TOK, seq_len=48,
                            batch_size=7, seed=0, num_epochs=1)
  batches = list(ds)
  assert sum(len(b['tokens']) for b in batches) == 196  # 200 good, batches of 7.
  for b in batches:
    assert b['tokens'].shape == (7, 48) and b['prompt_lengths'].shape == (7,)
  assert "no field(s) ['response']" in caplog.text
  assert 'not JSON' in caplog.text
  assert 'example of 124 tokens does not fit a row of 48' in caplog.text
  assert pipeline.COUNTS['skipped records'] >= 3


def test_undecodable_records_are_logged_counted_and_skipped(tmp_path, caplog):
  with open(tmp_path / 'd.jsonl', 'w') as f:
    f.write('{"text": "good one"}\n[1, 2]\n{"txt": "wrong field"}\n{broken\n'
            '{"text": "good two"}\n')
  before = pipeline.COUNTS.get('skipped records', 0)
  caplog.set_level(logging.WARNING, logger='dllm_jax.data')
  ds = pipeline.pretrain_dataset(f'jsonl:{tmp_path}/d.jsonl', TOK, seq_len=32,
                                 batch_size=1, seed=0, packing='first_fit',
                                 num_epochs=1)
  texts = sorted(TOK.decode(row[seg == s]) for b in ds
                 for row, seg in zip(b['tokens'], b['segment_ids'])
                 for s in set(seg[seg > 0].tolist()))
  assert texts == ['good one', 'good two']
  assert 'skipped record 1 of' in caplog.text  # The source's record index.
  assert pipeline.COUNTS['skipped records'] - before == 3
  assert 'not an object' in caplog.text and 'not JSON' in caplog.text
  assert "no text field 'text'" in caplog.text


def test_empty_or_missing_sources_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='no files match'):
    sources.open_source(f'jsonl:{tmp_path}/missing-*.jsonl')
  (tmp_path / 'empty.jsonl').write_text('\n\n')
  with pytest.raises(ValueError, match='has no records'):
    sources.open_source(f'jsonl:{tmp_path}/empty.jsonl')
  with pytest.raises(FileNotFoundError, match="cannot open split 'train'"):
    sources.open_source('tfds:no_such_dataset_here', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="unknown data source 'csv:x'"):
    sources.parse_spec('csv:x')
  (tmp_path / 'one.jsonl').write_text('{"text": "a"}\n')
  with pytest.raises(ValueError, match='fewer than the 2 processes'):
    pipeline.pretrain_dataset(f'jsonl:{tmp_path}/one.jsonl', TOK, seq_len=8,
                              batch_size=1, seed=0, shard_count=2, shard_index=1)
  with pytest.raises(ValueError, match="can convert text:GLOB or jsonl:GLOB"):
    convert.convert('stdlib', str(tmp_path / 'x'))


# id: (file name, its bytes, the source spec ({d}: the folder), objective, the
# first error).
_BAD_SOURCES = {
    'bad_json': ('a.jsonl', b'{broken\n' * 3, 'jsonl:{d}/a.jsonl', 'pretrain',
                 'not JSON'),
    'wrong_field': ('a.jsonl', b'{"txt": "x"}\n', 'jsonl:{d}/a.jsonl', 'pretrain',
                    "no text field 'text'"),
    'sft_too_long': ('a.jsonl', b'{"prompt": "p", "response": "%s"}\n' % (b'y' * 99),
                     'jsonl:{d}/a.jsonl', 'sft',
                     'example of 1\\d\\d tokens does not fit a row of 32'),
    'invalid_utf8': ('a.txt', b'\xff\xfe bad', 'text:{d}/*.txt', 'pretrain',
                     'not UTF-8'),
    'sft_on_text': ('a.txt', b'plain text', 'text:{d}/*.txt', 'sft',
                    r"no field\(s\) \['prompt', 'response'\]"),
}


@pytest.mark.parametrize('case', sorted(_BAD_SOURCES))
def test_a_source_of_only_bad_records_stops_with_one_error(tmp_path, case):
  """Every record skipped used to loop forever; a bounded run of skips stops it
  with one error naming the first."""
  from dllm_jax.errors import DataError
  name, data, spec, objective, reason = _BAD_SOURCES[case]
  (tmp_path / name).write_bytes(data)
  spec = spec.format(d=tmp_path)
  build = pipeline.sft_dataset if objective == 'sft' else pipeline.pretrain_dataset
  ds = build(spec, TOK, seq_len=32, batch_size=2, seed=0, skip_budget=40)
  # Grain reads ahead in threads: the count and the first record may run past.
  with pytest.raises(DataError, match=rf'\d+ records of {re.escape(spec)} in a row '
                     rf'could not be used; the first: skipped record \d+ of '
                     rf'{re.escape(spec)}: {reason}') as e:
    next(iter(ds))
  assert '\n' not in str(e.value)


def test_a_text_source_is_read_as_text_without_record_format(tmp_path):
  for i in range(3):
    (tmp_path / f'{i}.txt').write_text(f'doc-{i:04d} plain text, not JSON')
  ds = pipeline.pretrain_dataset(f'text:{tmp_path}/*.txt', TOK, seq_len=64,
                                 batch_size=1, seed=0, packing='first_fit',
                                 num_epochs=1)
  assert set().union(*(_doc_ids(b) for b in ds)) == {0, 1, 2}


def test_unreadable_data_and_tokenizer_files_are_one_line_errors_naming_them(tmp_path):
  from dllm_jax.tokenizers import hf as hf_tokenizer
  from dllm_jax.tokenizers import sp as sp_tokenizer
  (tmp_path / 'empty.array_record').write_bytes(b'')
  with pytest.raises(ValueError, match=rf'{tmp_path}/empty.array_record is not a '
                     'readable ArrayRecord file'):
    sources.open_source(f'array_record:{tmp_path}/*.array_record')
  os.makedirs(tmp_path / 'hf')
  (tmp_path / 'hf' / 'tokenizer.json').write_text('{"model": {')
  with pytest.raises(ValueError, match=rf'{tmp_path}/hf/tokenizer.json is not a valid '
                     'tokenizer.json'):
    hf_tokenizer.HFTokenizer(str(tmp_path / 'hf'))
  (tmp_path / 'bad.model').write_bytes(b'\x00garbage' * 10)
  with pytest.raises(ValueError, match=rf'{tmp_path}/bad.model is not a valid '
                     'SentencePiece model'):
    tokenizer_lib.make_tokenizer(f'sentencepiece:{tmp_path}/bad.model')
  with pytest.raises(ValueError, match=r'cannot train a SentencePiece model .*sp.model '
                     r'with vocab_size=20: .*Vocabulary size is smaller'):
    sp_tokenizer.train(['some text here'] * 10, str(tmp_path / 'sp'), vocab_size=20)
