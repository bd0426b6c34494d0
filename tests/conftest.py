"""Shared fixtures: the tiny model config and its parameters, a small run
config, a free port. Plain helpers live in tests/support.py."""

from __future__ import annotations

import jax
import pytest

from tests import support


@pytest.fixture(scope='session')
def tiny_config():
  """The `tiny` preset (byte vocabulary, 2 layers, d_model 128)."""
  from dllm_jax import presets  # pylint: disable=g-import-not-at-top
  return presets.get_preset('tiny')


@pytest.fixture(scope='session')
def tiny_params(tiny_config):
  """Random parameters of `tiny_config` (seed 0); do not mutate."""
  from dllm_jax import model  # pylint: disable=g-import-not-at-top
  return jax.jit(model.init_params, static_argnums=0)(tiny_config, jax.random.key(0))


@pytest.fixture
def small_run_config():
  """A fresh small training config (`support.small_config()`), safe to edit."""
  return support.small_config()


@pytest.fixture
def free_port():
  return support.free_port()


@pytest.fixture(scope='session')
def random_workdir(tmp_path_factory):
  """A workdir with a random-weight checkpoint of `support.small_config()`
  (one layer; sampling defaults: 8 new tokens in blocks of 4, 4 steps); do not write to it."""
  config = support.small_config()
  config.model.n_layers = 1  # Compiles faster.
  config.sample.gen_length, config.sample.block_length, config.sample.steps = 8, 4, 4
  workdir = tmp_path_factory.mktemp('random_workdir')
  support.write_random_checkpoint(workdir, config)
  return str(workdir)


@pytest.fixture(scope='session')
def random_block_workdir(tmp_path_factory):
  """A workdir with a random-weight checkpoint of `support.small_config()` trained
  (as its meta says) with objective block_diffusion, block size 8 (one layer;
  sampling defaults: 8 new tokens); do not write to it."""
  config = support.small_config(objective='block_diffusion')
  config.model.n_layers = 1  # Compiles faster.
  config.train.block.block_size = 8
  config.sample.gen_length, config.sample.block_length, config.sample.steps = 8, 8, 8
  workdir = tmp_path_factory.mktemp('random_block_workdir')
  support.write_random_checkpoint(workdir, config)
  return str(workdir)
