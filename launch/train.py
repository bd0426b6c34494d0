r"""Trains a diffusion LM (or its autoregressive twin); resumes from WORKDIR.

  python -m launch.train --workdir=/tmp/dllm
  python -m launch.train --workdir=/tmp/dllm --config=launch/configs/default.py \
      --config.train.steps=200 --config.model.preset=small
"""

import os

from absl import app, flags

from launch import cli

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), 'configs', 'default.py'))
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints and TensorBoard logs go here; an existing '
    'checkpoint is resumed.', required=True)


def main(argv):
  cli.start(argv)
  from dllm_jax.training import trainer  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    trainer.train(cli.config_value(_CONFIG), _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
