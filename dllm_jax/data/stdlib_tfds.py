"""The built-in corpus as a TFDS dataset (`dllm_stdlib`), prepared offline.

The running interpreter's standard-library `.py` files (see `stdlib_corpus`),
written once into `data_dir` as ArrayRecord shards with features `text` and
`path`. The default training run then reads it through `tfds.data_source` and
Grain, the same path a user's own TFDS dataset takes. The builder config is
named after the Python version (its stdlib is the data).
"""

from __future__ import annotations

import os
import sys

import tensorflow_datasets as tfds

from dllm_jax.data import stdlib_corpus

NAME = 'dllm_stdlib'
CONFIG = f'py{sys.version_info.major}{sys.version_info.minor}'


class DllmStdlib(tfds.core.GeneratorBasedBuilder):
  """Python standard-library sources, split by a hash of the relative path."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name=CONFIG, description='stdlib of the Python that prepared it')]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({'text': tfds.features.Text(),
                                             'path': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in stdlib_corpus.SPLITS}

  def _generate_examples(self, split):
    root = stdlib_corpus.stdlib_dir()
    for path in stdlib_corpus.stdlib_files(split):
      rel = os.path.relpath(path, root)
      with open(path, 'rb') as f:
        yield rel, {'text': f.read().decode('utf-8', errors='replace'), 'path': rel}


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def prepare(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Writes the dataset into `data_dir` unless it is there already (offline).

  With several JAX processes, process 0 prepares first and the others wait for
  it (a shared data dir is written once); a process that still finds nothing (a
  data dir local to each host) prepares its own copy.
  """
  import jax  # pylint: disable=g-import-not-at-top
  make = lambda: DllmStdlib(config=CONFIG, data_dir=data_dir or default_data_dir(),
                            file_format='array_record')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      _prepare(make())
    multihost_utils.sync_global_devices('dllm_stdlib prepared')
  return _prepare(make())


def _prepare(builder):
  if not builder.is_prepared():
    tfds.disable_progress_bar()
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception:  # pylint: disable=broad-except
      # Another writer may have finished first (it renames its folder into
      # place); re-raise only if the dataset is still not there.
      builder = type(builder)(config=CONFIG, data_dir=builder.data_dir_root,
                              file_format='array_record')
      if not builder.is_prepared():
        raise
  return builder


def data_source(split: str, data_dir: str | None = None):
  """A Grain-compatible random-access source of {'text', 'path'} records."""
  return prepare(data_dir).as_data_source(split=split)
