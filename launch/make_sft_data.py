r"""Writes the small synthetic chat dataset (train/validation JSONL).

  python -m launch.make_sft_data --out=/tmp/sft_data
  python -m launch.train --config=launch/configs/sft.py --workdir=/tmp/dllm_sft \
      --config.data.source='jsonl:/tmp/sft_data/{split}.jsonl'
"""

from absl import app, flags

from launch import cli

_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)
_NUM_TRAIN = flags.DEFINE_integer('num_train', 4000, 'Training examples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generator seed.')


def main(argv):
  cli.start(argv)
  from dllm_jax.data import synthetic_sft  # pylint: disable=g-import-not-at-top
  paths = synthetic_sft.write(_OUT.value, num_train=_NUM_TRAIN.value, seed=_SEED.value)
  for split, path in paths.items():
    print(f'{split}: {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
