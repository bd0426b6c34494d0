r"""Trains a diffusion LM (or its autoregressive twin); resumes from WORKDIR.

  python -m launch.train --workdir=/tmp/dllm
  python -m launch.train --workdir=/tmp/dllm --config=launch/configs/default.py \
      --config.train.steps=200 --config.model.preset=small
  # One of several processes (launch/slurm_gpu.sh and launch/tpu_pod.sh set this
  # up; SLURM and TPU pods are detected, or set JAX_COORDINATOR_ADDRESS,
  # JAX_NUM_PROCESSES, JAX_PROCESS_ID):
  python -m launch.train --workdir=/shared/dllm --config.mesh.fsdp=-1 --config.mesh.data=1
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
  from dllm_jax.parallel import multihost  # pylint: disable=g-import-not-at-top
  multihost.maybe_initialize()  # Several processes (SLURM, TPU pod, JAX_* env).
  from dllm_jax.training import trainer  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    trainer.train(cli.config_value(_CONFIG), _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
