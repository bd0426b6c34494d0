"""The built-in corpus: the running interpreter's standard-library sources.

Every machine with Python has it, so the default run needs no download. Files are
split into train/validation by a hash of their relative path (stable across
machines). `stdlib_tfds` writes them into a TFDS dataset that the pipeline reads.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig


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
