"""Text / JSONL files -> ArrayRecord shards that `array_record:GLOB` reads.

Each record is a JSON object (UTF-8): a JSONL line as it is (checked to be a
JSON object), or {"text": file contents} for a text file. Records are dealt
round-robin into `num_shards` files named `PREFIX-SSSSS-of-NNNNN.array_record`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterator

from dllm_jax.data import sources

log = logging.getLogger('dllm_jax.data')


def _records(files: list[str], kind: str) -> Iterator[bytes]:
  for path in files:
    if kind == 'text':
      with open(path, 'rb') as f:
        data = f.read()
      try:
        yield json.dumps({'text': data.decode('utf-8')}, ensure_ascii=False).encode()
      except UnicodeDecodeError:
        log.warning('skipped %s: not UTF-8', path)
      continue
    with open(path, 'rb') as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          value = json.loads(line)
        except json.JSONDecodeError as e:
          log.warning('skipped %s:%d: not JSON (%s)', path, n, e.msg)
          continue
        if not isinstance(value, dict):
          log.warning('skipped %s:%d: not a JSON object', path, n)
          continue
        yield line.rstrip(b'\r\n')


def convert(input_spec: str, output_prefix: str, *, num_shards: int = 4) -> dict:
  """Writes the records of `text:GLOB` or `jsonl:GLOB` into ArrayRecord shards.

  Returns {'records': n, 'skipped': m, 'files': [paths]}.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  kind, pattern = sources.parse_spec(input_spec)
  if kind not in ('text', 'jsonl'):
    raise ValueError(f'can convert text:GLOB or jsonl:GLOB, not {input_spec!r}.')
  if num_shards < 1:
    raise ValueError(f'num_shards must be positive, got {num_shards}.')
  files = sources._files(input_spec, pattern, 'train')  # pylint: disable=protected-access
  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  paths = [f'{output_prefix}-{i:05d}-of-{num_shards:05d}.array_record'
           for i in range(num_shards)]
  writers = [array_record_module.ArrayRecordWriter(p, 'group_size:1') for p in paths]
  n = 0
  try:
    for n, record in enumerate(_records(files, kind), 1):
      writers[(n - 1) % num_shards].write(record)
  finally:
    for w in writers:
      w.close()
  if n == 0:
    for p in paths:
      os.remove(p)
    raise ValueError(f'{input_spec!r}: no records to convert.')
  return {'records': n, 'files': paths}
