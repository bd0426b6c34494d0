"""Data sources: where records come from, by a one-string spec.

  stdlib                  the built-in corpus (a TFDS dataset prepared on first use)
  tfds:NAME               a prepared TFDS dataset in `data_dir` (read without TensorFlow)
  array_record:GLOB       ArrayRecord files (records: JSON objects or UTF-8 text)
  text:GLOB               local text files, one document per file
  jsonl:GLOB              local JSON-lines files, one record per line

A `{split}` in a glob is replaced by the split name. A `text:` source's records
are text and a `jsonl:` source's JSON, whatever `data.record_format` says
(`record_format_of`); it applies to ArrayRecord files. Every source is a Grain
random-access source (`len`, `__getitem__`); `decode_record` turns any record into
a dict of strings, and raises `RecordError` for one it cannot read (the
pipeline logs, counts and skips those).
"""

from __future__ import annotations

import glob as glob_lib
import json
import os
from typing import Any

import grain

KINDS = ('stdlib', 'tfds', 'array_record', 'text', 'jsonl')
RECORD_FORMATS = ('json', 'text')


class RecordError(ValueError):
  """A record that cannot be decoded (skipped and counted by the pipeline)."""


def parse_spec(spec: str) -> tuple[str, str]:
  kind, _, arg = spec.partition(':')
  if kind not in KINDS or (kind == 'stdlib') != (not arg):
    raise ValueError(f'unknown data source {spec!r}; use stdlib, tfds:NAME, '
                     'array_record:GLOB, text:GLOB or jsonl:GLOB.')
  return kind, arg


def record_format_of(spec: str, record_format: str = 'json') -> str:
  """The format of the byte records of source `spec`: text for a text:
  source (whatever `record_format` says), else `record_format` (JSON by
  default; a jsonl: source read with record_format=text takes a line per
  document)."""
  kind = spec.partition(':')[0] if isinstance(spec, str) else None
  return 'text' if kind == 'text' else record_format


def _array_record(spec: str, files: list[str]) -> Any:
  """Grain's ArrayRecord source; a file that is not ArrayRecord (empty,
  truncated, another format) is a ValueError naming it."""
  try:
    return grain.sources.ArrayRecordDataSource(files)
  except RuntimeError as e:
    error = e
  for path in files:  # Which one: open them one by one.
    try:
      grain.sources.ArrayRecordDataSource([path])
    except RuntimeError as e:
      error, bad = e, path
      break
  else:
    bad = ', '.join(files)
  detail = (str(error).strip().splitlines() or [''])[0][:200]
  raise ValueError(f'data source {spec!r}: {bad} is not a readable ArrayRecord '
                   f'file ({detail}).') from None


def _files(spec: str, pattern: str, split: str) -> list[str]:
  pattern = os.path.expanduser(pattern.replace('{split}', split))
  files = sorted(glob_lib.glob(pattern))
  if not files:
    raise FileNotFoundError(f'data source {spec!r} (split {split!r}): no files match '
                            f'{pattern!r}.')
  return files


class TextFilesSource(grain.sources.RandomAccessDataSource):
  """One record per file: its bytes."""

  def __init__(self, paths: list[str]):
    self._paths = list(paths)

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> bytes:
    with open(self._paths[index], 'rb') as f:
      return f.read()

  def __repr__(self) -> str:
    return f'TextFilesSource({len(self._paths)} files)'


class JsonlSource(grain.sources.RandomAccessDataSource):
  """One record per non-blank line of JSON-lines files (raw bytes; indexed by
  byte offset once, read by seeking)."""

  def __init__(self, paths: list[str]):
    self._paths = list(paths)
    self._index: list[tuple[int, int, int]] = []  # (file, offset, length)
    for f_idx, path in enumerate(self._paths):
      offset = 0
      with open(path, 'rb') as f:
        for line in f:
          if line.strip():
            self._index.append((f_idx, offset, len(line)))
          offset += len(line)

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int) -> bytes:
    f_idx, offset, length = self._index[index]
    with open(self._paths[f_idx], 'rb') as f:
      f.seek(offset)
      return f.read(length)

  def __repr__(self) -> str:
    return f'JsonlSource({len(self._paths)} files, {len(self._index)} records)'


def open_source(spec: str, *, split: str = 'train',
                data_dir: str | None = None) -> Any:
  """A Grain random-access source for `spec` (see the module docstring).

  Raises FileNotFoundError / ValueError naming the spec when it has no records.
  """
  kind, arg = parse_spec(spec)
  if kind == 'stdlib':
    from dllm_jax.data import stdlib_tfds  # pylint: disable=g-import-not-at-top
    source = stdlib_tfds.data_source(split, data_dir=data_dir)
  elif kind == 'tfds':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      # download=False: never reach for the network; the data must be prepared.
      source = tfds.data_source(arg, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types for "not there".
      raise FileNotFoundError(
          f'data source {spec!r}: cannot open split {split!r} in data_dir '
          f'{data_dir or "(TFDS default)"}: {e}'.splitlines()[0]) from e
  elif kind == 'array_record':
    source = _array_record(spec, _files(spec, arg, split))
  elif kind == 'text':
    source = TextFilesSource(_files(spec, arg, split))
  else:
    source = JsonlSource(_files(spec, arg, split))
  if len(source) == 0:
    raise ValueError(f'data source {spec!r} (split {split!r}) has no records.')
  return source


def decode_record(record: Any, record_format: str = 'json') -> dict[str, Any]:
  """A record (TFDS dict, or bytes holding JSON / UTF-8 text) -> dict of str.

  `record_format` applies to byte records: 'json' (an object per record) or
  'text' (the record is the document, returned as {'text': ...}).
  """
  if isinstance(record, dict):
    return {k: v.decode('utf-8', errors='replace') if isinstance(v, bytes) else v
            for k, v in record.items()}
  if not isinstance(record, (bytes, str)):
    raise RecordError(f'unsupported record type {type(record).__name__}')
  if record_format == 'text':
    if isinstance(record, bytes):
      try:
        record = record.decode('utf-8')
      except UnicodeDecodeError as e:
        raise RecordError(f'not UTF-8 ({e.reason} at byte {e.start})') from None
    return {'text': record}
  if record_format != 'json':
    raise ValueError(f'unknown record format {record_format!r}; known: {RECORD_FORMATS}.')
  try:
    value = json.loads(record)
  # ValueError: also UTF-8 errors and an integer of over 4300 digits;
  # RecursionError: arrays nested thousands deep.
  except (ValueError, RecursionError) as e:
    raise RecordError(f'not JSON ({str(e)[:200]})') from None
  if not isinstance(value, dict):
    raise RecordError(f'a JSON {type(value).__name__}, not an object')
  return value
