"""The dataset a run's config asks for: one place builds it (trainer, launch.eval)."""

from __future__ import annotations

import grain
import jax

from dllm_jax import objectives
from dllm_jax.data import pipeline


def make_dataset(config, tokenizer, *, split: str = 'train',
                 num_epochs: int | None = None,
                 batch_size: int | None = None) -> grain.IterDataset:
  """This process's shard of the Grain dataset a run config asks for.

  `config`: the run config (an ml_collections ConfigDict or a
  `training.sections.RunConfig`; both read as `config.data.seq_len` etc.). Its
  objective says which kind of rows it trains on (packed text or chat
  examples). `batch_size` is per process (default: train.batch_size / process
  count).
  """
  d = config.data
  common = dict(seq_len=d.seq_len, seed=config.seed, split=split,
                data_dir=d.data_dir, num_epochs=num_epochs,
                batch_size=batch_size or config.train.batch_size // jax.process_count(),
                shard_index=jax.process_index(), shard_count=jax.process_count(),
                num_workers=d.num_workers, record_format=d.record_format)
  if objectives.get(config.train.objective).data == 'chat':
    return pipeline.sft_dataset(d.source, tokenizer, prompt_field=d.prompt_field,
                                response_field=d.response_field, **common)
  return pipeline.pretrain_dataset(d.source, tokenizer, packing=d.packing,
                                   text_field=d.text_field, **common)
