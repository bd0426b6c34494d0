"""The built-in corpus: the running interpreter's standard-library sources.

Every machine with Python has it, so the default run needs no download. Files are
split into train/validation by a hash of their relative path (stable across
machines), read as bytes, tokenized, concatenated and cut into fixed-length rows
with Grain; each row carries segment ids and positions per source file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sysconfig

import grain
import numpy as np

from dllm_jax.data.tokenizer import ByteTokenizer

SPLITS = ('train', 'validation')


def stdlib_dir() -> str:
  return sysconfig.get_paths()['stdlib']


def stdlib_files(split: str = 'train', validation_fraction: float = 0.02,
                 root: str | None = None) -> list[str]:
  """Sorted `.py` files of the standard library (site-packages excluded)."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; known: {SPLITS}.')
  root = root or stdlib_dir()
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in ('site-packages', 'dist-packages', '__pycache__'))
    for name in sorted(filenames):
      if name.endswith('.py'):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root).encode()
        bucket = int(hashlib.sha1(rel).hexdigest()[:8], 16) / 0xFFFFFFFF
        if (bucket < validation_fraction) == (split == 'validation'):
          files.append(path)
  if not files:
    raise FileNotFoundError(f'no .py files for split {split!r} under {root}.')
  return files


@dataclasses.dataclass(frozen=True)
class _ReadAndTokenize:
  tokenizer: ByteTokenizer

  def __call__(self, path: str) -> dict[str, np.ndarray]:
    with open(path, 'rb') as f:
      data = f.read()
    return {'tokens': self.tokenizer.encode(data, add_bos=True, add_eos=True)}


def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {'tokens': row['tokens'].astype(np.int32),
          'segment_ids': row['tokens_segment_ids'].astype(np.int32),
          'positions': row['tokens_positions'].astype(np.int32)}


def pretrain_dataset(*, seq_len: int, batch_size: int, seed: int,
                     tokenizer: ByteTokenizer, split: str = 'train',
                     num_epochs: int | None = None, shard_index: int = 0,
                     shard_count: int = 1, num_workers: int = 0,
                     root: str | None = None) -> grain.IterDataset:
  """Batches {tokens, segment_ids, positions}, each int32 [batch_size, seq_len].

  Files are shuffled by `seed` (a new order every epoch), sharded by
  `shard_index`/`shard_count` (JAX process), concatenated and split into rows
  (Grain's ConcatThenSplit: long files span rows, rows hold several files).
  `num_workers` > 0 reads in Grain worker processes.
  """
  files = stdlib_files(split, root=root)[shard_index::shard_count]
  ds = grain.MapDataset.source(files).shuffle(seed=seed).repeat(num_epochs)
  ds = ds.map(_ReadAndTokenize(tokenizer)).to_iter_dataset()
  ds = grain.experimental.ConcatThenSplitIterDataset(
      ds, length_struct={'tokens': seq_len})
  ds = ds.map(_rename).batch(batch_size, drop_remainder=True)
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds
