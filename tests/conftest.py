"""Shared fixtures: the tiny model config and its parameters, a small run
config, a free port. Plain helpers live in tests/support.py."""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import pytest

from tests import support

_CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'
_own_cache = []


def pytest_configure(config):
  """One XLA compilation cache for the whole session, shared with the launcher
  subprocesses through the environment: many tests compile the same program
  (a train step of `support.small_config()`, its end-of-run sampler) in a fresh
  closure or a fresh process, and the second compile then reads it from disk.
  Only identical programs hit, so what runs is unchanged. A cache directory set
  by the caller is used as it is."""
  del config
  if not os.environ.get(_CACHE_ENV):
    _own_cache.append(tempfile.mkdtemp(prefix='dllm_jax_tests_xla_cache_'))
    os.environ[_CACHE_ENV] = _own_cache[0]
  # Compiles under a second are cached too (the default skips them).
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
  jax.config.update('jax_compilation_cache_dir', os.environ[_CACHE_ENV])
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


def pytest_unconfigure(config):
  del config
  for path in _own_cache:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_config():
  """The `tiny` preset (byte vocabulary, 2 layers, d_model 128)."""
  from dllm_jax import models as presets  # pylint: disable=g-import-not-at-top
  return presets.get_preset('tiny')


@pytest.fixture(scope='session')
def tiny_params(tiny_config):
  """Random parameters of `tiny_config` (seed 0); do not mutate."""
  from dllm_jax import models as model  # pylint: disable=g-import-not-at-top
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
  return _random_workdir(tmp_path_factory, 'random_workdir', support.small_config(),
                         sample=(8, 4, 4))


@pytest.fixture(scope='session')
def random_block_workdir(tmp_path_factory):
  """A workdir with a random-weight checkpoint of `support.small_config()` trained
  (as its meta says) with objective block_diffusion, block size 8 (one layer;
  sampling defaults: 8 new tokens); do not write to it."""
  config = support.small_config(objective='block_diffusion')
  config.train.block.block_size = 8
  return _random_workdir(tmp_path_factory, 'random_block_workdir', config,
                         sample=(8, 8, 8))


@pytest.fixture(scope='session')
def eos_block_workdir(tmp_path_factory):
  """A workdir like `random_block_workdir` with block size 4 (sampling defaults:
  12 new tokens, temperature 0.7) whose random weights end answers early
  (`support.eos_prone`): some rows stop at EOS in their first, second or third
  block; do not write to it."""
  config = support.small_config(objective='block_diffusion')
  config.train.block.block_size = 4
  config.sample.temperature = 0.7
  return _random_workdir(tmp_path_factory, 'eos_block_workdir', config,
                         sample=(12, 4, 4), edit=support.eos_prone)


def _random_workdir(tmp_path_factory, name: str, config, sample, edit=None) -> str:
  """`config` with one layer (compiles faster) and sampling defaults `sample`
  (gen_length, block_length, steps), written with random weights (changed by
  `edit`, see `support.write_random_checkpoint`) to a new session directory."""
  config.model.n_layers = 1
  config.sample.gen_length, config.sample.block_length, config.sample.steps = sample
  workdir = tmp_path_factory.mktemp(name)
  support.write_random_checkpoint(workdir, config, edit=edit)
  return str(workdir)


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """(workdir, final parameters as numpy) of `support.small_config(steps=2)`
  trained by `trainer.train` (checkpoints at steps 2 and the end-of-run sample
  included); do not write to it: copy it (`shutil.copytree`) to resume from it."""
  from dllm_jax.training import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('trained_workdir')
  state = trainer.train(support.small_config(steps=2), str(workdir))
  return str(workdir), jax.device_get(state.params)


def _fast_cpu_compiles() -> None:
  """Compiles XLA:CPU programs with `support.FAST_COMPILE_FLAGS` (LLVM -O0) for
  the whole session and, through the environment, its launcher and worker
  subprocesses, as tests/test_standalone.py's smoke runs do: the programs are
  tiny, so compiling dominates and -O0 about halves it. Results are compared
  within a run; a subprocess whose tight bounds were set at the default
  optimisation takes the flags out (`support.without_fast_compiles`). Only on a
  CPU-only JAX install (no GPU/TPU plugin: the gpu tests time kernels), before
  any backend starts, and never over a caller's own choice."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('jax_plugins') or importlib.util.find_spec('libtpu'):
    return
  if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = support.with_fast_compiles(os.environ)['XLA_FLAGS']


_fast_cpu_compiles()
