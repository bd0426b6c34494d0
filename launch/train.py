r"""Trains a diffusion LM (or its autoregressive twin); resumes from WORKDIR.

  python -m launch.train --workdir=/tmp/dllm
  python -m launch.train --workdir=/tmp/dllm --config=launch/configs/default.py \
      --config.train.steps=200 --config.model.preset=small
"""

import os
import sys

from absl import app, flags, logging

from launch import cli

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), 'configs', 'default.py'))
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints and TensorBoard logs go here; an existing '
    'checkpoint is resumed.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  from dllm_jax import errors  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import trainer  # pylint: disable=g-import-not-at-top
  try:
    trainer.train(cli.config_value(_CONFIG), _WORKDIR.value)
  except (ValueError, FileNotFoundError, errors.DllmError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
