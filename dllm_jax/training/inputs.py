"""The dataset a run's config asks for: one place builds it (trainer, launch.eval)."""

from __future__ import annotations

import grain
import jax

from dllm_jax import objectives
from dllm_jax.data import pipeline, shards


def make_dataset(config, tokenizer, *, split: str = 'train',
                 num_epochs: int | None = None,
                 batch_size: int | None = None, shard_index: int | None = None,
                 shard_count: int | None = None) -> grain.IterDataset:
  """This process's shard of the Grain dataset a run config asks for.

  `config`: the run config (an ml_collections ConfigDict or a
  `training.sections.RunConfig`; both read as `config.data.seq_len` etc.). Its
  objective says which kind of rows it trains on (packed text or chat
  examples). `batch_size` is per process (default: train.batch_size / process
  count). `shard_index` / `shard_count`: another shard of the records
  (default: this process's of the process count).
  """
  d = config.data
  common = dict(seq_len=d.seq_len, seed=config.seed, split=split,
                data_dir=d.data_dir, num_epochs=num_epochs,
                batch_size=batch_size or config.train.batch_size // jax.process_count(),
                shard_index=jax.process_index() if shard_index is None else shard_index,
                shard_count=shard_count or jax.process_count(),
                num_workers=d.num_workers, record_format=d.record_format,
                skip_budget=d.skip_budget)
  if objectives.get(config.train.objective).data == 'chat':
    return pipeline.sft_dataset(d.source, tokenizer, prompt_field=d.prompt_field,
                                response_field=d.response_field, **common)
  return pipeline.pretrain_dataset(d.source, tokenizer, packing=d.packing,
                                   text_field=d.text_field, **common)


def make_train_iterator(config, tokenizer) -> shards.ShardedIterator:
  """This process's training batches [train.batch_size / process count, ...],
  read from data shards that a resume on another process count keeps
  (`shards.py`); until a checkpoint says otherwise, one shard per process."""
  make = lambda s, n, rows: make_dataset(config, tokenizer, batch_size=rows,
                                         shard_index=s, shard_count=n)
  return shards.ShardedIterator(make, batch_size=config.train.batch_size,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
