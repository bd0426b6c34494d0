"""Checksums of a checkpoint's files: silent corruption is found on restore.

Once a checkpoint step is committed, the primary process writes
`STEP/dllm_checksums.json`: the size and CRC-32 of every file in the step's
folder (array data, Orbax metadata, the JSON meta). A restore first checks the
files of the items it reads against it; a flipped byte, a truncated or a
missing file is a `ChecksumError` naming the file. A step without the manifest
(written by an older version, or a run killed between the commit and the
manifest) is restored unchecked.

CRC-32 (zlib) detects storage corruption, not tampering; it reads about 1 GB/s,
so the manifest of a multi-GB optimizer state takes seconds, on the primary
process, after each save has completed.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Iterable

from dllm_jax.errors import CheckpointError

MANIFEST = 'dllm_checksums.json'
_CHUNK = 1 << 22


class ChecksumError(CheckpointError):
  """A checkpoint file does not match the checksum recorded at save time."""


def _crc32(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir: str) -> list[str]:
  """Paths relative to `step_dir` of its files (the manifest excluded), sorted."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != MANIFEST and not name.startswith(MANIFEST):
        out.append(rel)
  return sorted(out)


def write_manifest(step_dir: str) -> int:
  """Records size and CRC-32 of every file of a committed step; returns the
  step's total size in bytes. Written atomically (a rename)."""
  files = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                 _crc32(os.path.join(step_dir, rel))] for rel in _files(step_dir)}
  tmp = os.path.join(step_dir, f'{MANIFEST}.tmp-{os.getpid()}')
  with open(tmp, 'w') as f:
    json.dump({'algorithm': 'crc32', 'files': files}, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, MANIFEST))
  return sum(size for size, _ in files.values())


def has_manifest(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, MANIFEST))


def verify(step_dir: str, items: Iterable[str] | None = None) -> bool:
  """Checks the files of `items` (top-level folders such as 'params'; None: all)
  against the manifest. Returns False when the step has no manifest (nothing
  to check), True when every file matches; raises ChecksumError otherwise."""
  path = os.path.join(step_dir, MANIFEST)
  try:
    with open(path) as f:
      files = json.load(f)['files']
  except FileNotFoundError:
    return False
  except (ValueError, KeyError, TypeError) as e:
    raise ChecksumError(f'{path} is unreadable ({type(e).__name__}).') from None
  items = None if items is None else set(items)
  for rel, (size, crc) in sorted(files.items()):
    if items is not None and rel.split(os.sep)[0] not in items:
      continue
    full = os.path.join(step_dir, rel)
    try:
      actual = os.path.getsize(full)
    except FileNotFoundError:
      raise ChecksumError(f'{rel} is missing') from None
    if actual != size:
      raise ChecksumError(f'{rel} has {actual} bytes, {size} when saved')
    if _crc32(full) != crc:
      raise ChecksumError(f'{rel} does not match its checksum (corrupt data)')
  return True
