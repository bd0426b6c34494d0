"""Grain input pipelines: source -> shard -> shuffle -> tokenize -> pack -> batch.

`pretrain_dataset` yields {tokens, segment_ids, positions} int32 [B, L] rows of
packed documents (segment 0 is padding); `sft_dataset` yields {tokens,
prompt_lengths} (one chat example per row, EOS-padded). Both shard the records
by JAX process before shuffling (each host reads a disjoint part), shuffle with
a new order every epoch, and optionally run in Grain worker processes. The
iterators' `get_state()` goes into the checkpoint for exact resume.

Bad records (undecodable, missing field, too long for an SFT row) are logged and
counted, then skipped; `skip_budget` records skipped in a row (a source whose
every record is bad would otherwise be read forever) stop the run with a
DataError naming the first error; a document longer than a row is split into row-sized
pieces (packing 'first_fit'; logged and counted) or simply spans rows (packing
'concat', where that is the design).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import grain
import numpy as np

from dllm_jax.data import sft as sft_lib
from dllm_jax.data import sources as sources_lib
from dllm_jax.errors import DataError

PACKINGS = ('concat', 'first_fit', 'stream')
log = logging.getLogger('dllm_jax.data')

# Per-process counters of skipped and split records, by reason (workers count
# their own); each is also logged: the first few per source, then every 1000th.
COUNTS: dict[str, int] = {}
_PER_SOURCE: dict[tuple[str, str], int] = {}
_LOG_FIRST = 10
SKIP_BUDGET = 1000
# Per source: [records skipped in a row, the first skip's message].
_IN_A_ROW: dict[str, list] = {}
_IN_A_ROW_LOCK = threading.Lock()  # Grain may run transforms in threads.


def _count(kind: str, source: str, message: str) -> None:
  COUNTS[kind] = COUNTS.get(kind, 0) + 1
  n = _PER_SOURCE[kind, source] = _PER_SOURCE.get((kind, source), 0) + 1
  if n <= _LOG_FIRST or n % 1000 == 0:
    log.warning('%s (%d %s of this source so far in this process)', message, n, kind)


def _skipped(source: str, message: str, budget: int) -> None:
  """Counts a skipped record; raises DataError once `budget` (> 0) were
  skipped in a row."""
  _count('skipped records', source, message)
  with _IN_A_ROW_LOCK:
    run = _IN_A_ROW.setdefault(source, [0, message])
    if run[0] == 0:
      run[1] = message
    run[0] += 1
    count, first = run
  if 0 < budget <= count:
    raise DataError(f'{count} records of {source} in a row could not be used; the '
                    f'first: {first}. Check data.source, data.record_format and '
                    'the field names (or raise data.skip_budget).')


def _used(source: str) -> None:
  run = _IN_A_ROW.get(source)
  if run:
    run[0] = 0


def _not_none(x) -> bool:
  return x is not None


def _encode(tokenizer, text: str, **kwargs) -> np.ndarray:
  """`tokenizer.encode`, with text that is not valid Unicode (a lone surrogate,
  which JSON's \\ud800 escapes can produce) a RecordError."""
  try:
    return tokenizer.encode(text, **kwargs)
  except UnicodeError as e:
    raise sources_lib.RecordError(f'not valid Unicode ({e.reason} at character '
                                  f'{getattr(e, "start", "?")})') from None


@dataclasses.dataclass(frozen=True)
class _Tokenize:
  """(index, record) -> {'tokens': BOS doc EOS} or None (counted skip)."""
  tokenizer: Any
  source: str
  shard_index: int
  shard_count: int
  text_field: str
  record_format: str
  skip_budget: int = SKIP_BUDGET

  def __call__(self, index: int, record: Any) -> dict[str, np.ndarray] | None:
    try:
      rec = sources_lib.decode_record(record, self.record_format)
      text = rec.get(self.text_field)
      if not isinstance(text, str):
        raise sources_lib.RecordError(f'no text field {self.text_field!r} '
                                      f'(fields: {sorted(rec)})')
      row = {'tokens': _encode(self.tokenizer, text, add_bos=True, add_eos=True)}
    except sources_lib.RecordError as e:
      record = self.shard_index + index * self.shard_count
      _skipped(self.source, f'skipped record {record} of {self.source}: {e}',
               self.skip_budget)
      return None
    _used(self.source)
    return row


@dataclasses.dataclass(frozen=True)
class _SftRow:
  """(index, record) -> {tokens, prompt_lengths} or None (counted skip)."""
  tokenizer: Any
  source: str
  shard_index: int
  shard_count: int
  seq_len: int
  record_format: str
  prompt_field: str
  response_field: str
  skip_budget: int = SKIP_BUDGET

  def __call__(self, index: int, record: Any) -> dict[str, np.ndarray] | None:
    try:
      rec = sources_lib.decode_record(record, self.record_format)
      messages, response = sft_lib.messages_of(rec, self.prompt_field,
                                               self.response_field)
      row = sft_lib.sft_row(self.tokenizer, messages, response, self.seq_len)
    except (sources_lib.RecordError, UnicodeError) as e:  # Unicode: a lone surrogate.
      reason = f'not valid Unicode ({e.reason})' if isinstance(e, UnicodeError) else e
      record = self.shard_index + index * self.shard_count
      _skipped(self.source, f'skipped record {record} of {self.source}: {reason}',
               self.skip_budget)
      return None
    _used(self.source)
    return row


class _SplitLong(grain.experimental.FlatMapTransform):
  """Cuts a document longer than a row into row-sized pieces, and says so."""

  max_fan_out = 1 << 20

  def __init__(self, seq_len: int, source: str):
    self.seq_len, self.source = seq_len, source

  def flat_map(self, element):
    tokens = element['tokens']
    if len(tokens) <= self.seq_len:
      return [element]
    _count('split documents', self.source, f'document of {len(tokens)} tokens is longer than a '
           f'row of {self.seq_len}: split into {-(-len(tokens) // self.seq_len)} pieces')
    return [{'tokens': tokens[i:i + self.seq_len]}
            for i in range(0, len(tokens), self.seq_len)]


def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {'tokens': row['tokens'].astype(np.int32),
          'segment_ids': row['tokens_segment_ids'].astype(np.int32),
          'positions': row['tokens_positions'].astype(np.int32)}


def _open(source: str | Any, split: str, data_dir: str | None) -> tuple[str, Any]:
  """(a name for messages, the random-access source) of a spec or a source."""
  if isinstance(source, str):
    return source, sources_lib.open_source(source, split=split, data_dir=data_dir)
  return repr(source), source


def _examples(source: Any, transform, *, seed: int, num_epochs: int | None,
              shard_index: int, shard_count: int, name: str) -> grain.IterDataset:
  """This process's records, decoded by `transform(index, record)` (None:
  skipped), shuffled anew every epoch."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} not in [0, {shard_count}).')
  _IN_A_ROW.pop(name, None)  # A new dataset counts afresh.
  ds = grain.MapDataset.source(source)
  if len(ds) < shard_count:
    raise ValueError(f'data source {name!r} has {len(ds)} records, fewer than the '
                     f'{shard_count} processes that read it.')
  ds = ds[shard_index::shard_count].map_with_index(transform)
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  return ds.filter(_not_none).to_iter_dataset()


def _finish(ds: grain.IterDataset, batch_size: int, num_workers: int,
            ) -> grain.IterDataset:
  ds = ds.batch(batch_size, drop_remainder=True)
  if num_workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # Grain's workers read absl flags; outside an absl app (a notebook, a
      # test) take their defaults instead of failing.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


def pretrain_dataset(source: str | Any, tokenizer, *, seq_len: int, batch_size: int,
                     seed: int, split: str = 'train', data_dir: str | None = None,
                     packing: str = 'concat', num_epochs: int | None = None,
                     shard_index: int = 0, shard_count: int = 1,
                     num_workers: int = 0, text_field: str = 'text',
                     record_format: str = 'json',
                     skip_budget: int = SKIP_BUDGET) -> grain.IterDataset:
  """Packed pretraining batches {tokens, segment_ids, positions}, int32 [B, L].

  `source`: a spec string (`sources.py`) or an opened random-access source.
  Packing 'concat' concatenates documents and cuts rows (documents span rows,
  nothing is padded); 'first_fit' packs whole documents into rows (Grain's
  first-fit packer; padding has segment id 0 and the pad token), splitting any
  longer than a row. 'stream' cuts rows as 'concat' does but keeps no document
  boundaries: batches are {tokens} alone, so attention crosses documents (as in
  plain GPT-style pretraining; BOS/EOS still mark them) and runs with no mask,
  its fastest path. `skip_budget`: bad records skipped in a row before a
  DataError (0: no limit). A `text:`/`jsonl:` spec implies its record format.
  """
  if packing not in PACKINGS:
    raise ValueError(f'unknown packing {packing!r}; known: {PACKINGS}.')
  name, source = _open(source, split, data_dir)
  record_format = sources_lib.record_format_of(name, record_format)
  ds = _examples(source, _Tokenize(tokenizer, name, shard_index, shard_count,
                                   text_field, record_format, skip_budget),
                 seed=seed, num_epochs=num_epochs, shard_index=shard_index,
                 shard_count=shard_count, name=name)
  if packing in ('concat', 'stream'):
    ds = grain.experimental.ConcatThenSplitIterDataset(
        ds, length_struct={'tokens': seq_len})
    if packing == 'stream':
      return _finish(ds.map(lambda row: {'tokens': row['tokens'].astype(np.int32)}),
                     batch_size, num_workers)
  else:
    ds = grain.experimental.FlatMapIterDataset(ds, _SplitLong(seq_len, name))
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct={'tokens': seq_len}, num_packing_bins=batch_size,
        seed=seed, padding_struct={'tokens': tokenizer.special_ids.pad})
  return _finish(ds.map(_rename), batch_size, num_workers)


def sft_dataset(source: str | Any, tokenizer, *, seq_len: int, batch_size: int,
                seed: int, split: str = 'train', data_dir: str | None = None,
                num_epochs: int | None = None, shard_index: int = 0,
                shard_count: int = 1, num_workers: int = 0,
                prompt_field: str = 'prompt', response_field: str = 'response',
                record_format: str = 'json',
                skip_budget: int = SKIP_BUDGET) -> grain.IterDataset:
  """SFT batches {tokens int32 [B, L], prompt_lengths int32 [B]}; see `sft.py`
  (`skip_budget`, the record format: as `pretrain_dataset`)."""
  name, source = _open(source, split, data_dir)
  record_format = sources_lib.record_format_of(name, record_format)
  ds = _examples(source, _SftRow(tokenizer, name, shard_index, shard_count, seq_len,
                                 record_format, prompt_field, response_field,
                                 skip_budget),
                 seed=seed, num_epochs=num_epochs, shard_index=shard_index,
                 shard_count=shard_count, name=name)
  return _finish(ds, batch_size, num_workers)
