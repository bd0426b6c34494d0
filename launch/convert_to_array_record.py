r"""Converts local text / JSONL files into ArrayRecord shards for training.

  python -m launch.convert_to_array_record --input='jsonl:/data/chat/*.jsonl' \
      --output=/data/chat_ar/train --num_shards=8
  # then: --config.data.source='array_record:/data/chat_ar/train-*.array_record'

Text files become one {"text": ...} record each; JSONL lines are kept as they are
(lines that are not JSON objects are logged and skipped).
"""

from absl import app, flags

from launch import cli

_INPUT = flags.DEFINE_string('input', None, 'text:GLOB or jsonl:GLOB.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Output path prefix of the shards.',
                              required=True)
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 4, 'Number of ArrayRecord files.')


def main(argv):
  cli.start(argv)
  from dllm_jax.data import convert  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    out = convert.convert(_INPUT.value, _OUTPUT.value, num_shards=_NUM_SHARDS.value)
  print(f'wrote {out["records"]} records into {len(out["files"])} shards: '
        f'{_OUTPUT.value}-*-of-{_NUM_SHARDS.value:05d}.array_record')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
