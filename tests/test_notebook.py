"""experiments/colab_quickstart.ipynb runs headless, top to bottom."""

import json
import os

import pytest

from dllm_jax.training import trainer
from tests.support import REPO, small_config


def test_quickstart_notebook_runs_headless(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  config = small_config(steps=2)
  config.model.max_len = 128
  trainer.train(config, str(workdir))
  monkeypatch.setenv('DLLM_WORKDIR', str(workdir))
  monkeypatch.setenv('DLLM_PLOT', str(tmp_path / 'commit_order.png'))
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  with open(os.path.join(REPO, 'experiments', 'colab_quickstart.ipynb')) as f:
    nb = json.load(f)
  namespace = {}
  for cell in nb['cells']:
    if cell['cell_type'] == 'code':
      source = ''.join(cell['source'])
      exec(compile(source, 'colab_quickstart.ipynb', 'exec'), namespace)  # pylint: disable=exec-used
  assert (tmp_path / 'commit_order.png').stat().st_size > 1000
  steps = namespace['steps']
  assert (steps >= 0).all() and steps.max() == 31  # Every position committed.
  assert len(set(steps.tolist())) == 32  # One token per step.
