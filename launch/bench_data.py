r"""Input-pipeline throughput next to the train step it feeds; prints a table.

  python -m launch.bench_data                     # built-in corpus, 8 x 2048
  python -m launch.bench_data --num_workers=0,2 --source='jsonl:/data/*.jsonl'

Pipeline rows: tokens/s of packed, batched rows delivered by the Grain
pipeline (tokenization and packing included), after --warmup batches. Train
step row: tokens/s the --preset model's train step consumes at the same batch
shape on this machine (random tokens, compiled ahead). Data is never the
bottleneck when every pipeline row is well above the train step.
"""

import time

from absl import app, flags

from launch import cli

_SOURCE = flags.DEFINE_string('source', 'stdlib', 'Data source spec.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir.')
_TOKENIZER = flags.DEFINE_string('tokenizer', 'byte', 'Tokenizer spec.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 2048, 'Row length.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Rows per batch.')
_PACKINGS = flags.DEFINE_list('packing', ['concat', 'first_fit'], 'Packings to time.')
_WORKERS = flags.DEFINE_list('num_workers', ['0', '2'], 'Grain worker counts to time.')
_BATCHES = flags.DEFINE_integer('batches', 100, 'Timed batches per pipeline.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed batches (worker start-up).')
_PRESET = flags.DEFINE_string('preset', 'tiny', 'Model preset of the train step.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed train steps.')


def _time_pipeline(packing: str, workers: int) -> float:
  from dllm_jax import tokenizers  # pylint: disable=g-import-not-at-top
  from dllm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  ds = pipeline.pretrain_dataset(
      _SOURCE.value, tokenizers.make_tokenizer(_TOKENIZER.value),
      seq_len=_SEQ_LEN.value, batch_size=_BATCH.value, seed=0,
      data_dir=_DATA_DIR.value, packing=packing, num_workers=workers)
  it = iter(ds)
  for _ in range(_WARMUP.value):
    next(it)
  t0 = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  return _BATCHES.value * _BATCH.value * _SEQ_LEN.value / (time.perf_counter() - t0)


def _time_train_step() -> float:
  from dllm_jax import models  # pylint: disable=g-import-not-at-top
  from launch import step_timing  # pylint: disable=g-import-not-at-top
  cfg = models.get_preset(_PRESET.value, max_len=max(
      _SEQ_LEN.value, models.PRESETS[_PRESET.value]['max_len']))
  t = step_timing.time_train_step(cfg, _BATCH.value, _SEQ_LEN.value,
                                  steps=_STEPS.value, log=lambda msg: None)
  return _BATCH.value * _SEQ_LEN.value / t.seconds


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    rows = []
    for packing in _PACKINGS.value:
      for workers in (int(w) for w in _WORKERS.value):
        tok_s = _time_pipeline(packing, workers)
        rows.append((f'pipeline: {_SOURCE.value}, {_TOKENIZER.value}, {packing}, '
                     f'{workers} workers', tok_s))
        print(f'{rows[-1][0]}: {tok_s:,.0f} tokens/s', flush=True)
    step_tok_s = _time_train_step()
  dev = jax.devices()[0]
  print(f'\n{_BATCH.value} x {_SEQ_LEN.value} tokens per batch, on {dev.device_kind} '
        f'({jax.device_count()} device(s))\n')
  print('| what | tokens/s | x train step |')
  print('|---|---|---|')
  for name, tok_s in rows:
    print(f'| {name} | {tok_s:,.0f} | {tok_s / step_tok_s:.1f}x |')
  print(f'| train step: {_PRESET.value} preset | {step_tok_s:,.0f} | 1.0x |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
