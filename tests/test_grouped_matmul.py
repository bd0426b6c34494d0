"""The routed experts' grouped-matmul paths (models/grouped_matmul.py) against
the dense reference, values and gradients; the dispatcher; and the block
sampler giving the same tokens on every path."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.models import grouped_matmul as gm
from dllm_jax.sampling import block


@pytest.fixture(scope='module')
def problem():
  """x [24, 16], 8 experts (gate_up [8, 16, 2, 8], down [8, 8, 16]), top-2
  with experts 0-2 taking most assignments (so slots overflow)."""
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (24, 16))
  gate_up = 0.3 * jax.random.normal(keys[1], (8, 16, 2, 8))
  down = 0.3 * jax.random.normal(keys[2], (8, 8, 16))
  logits = jax.random.normal(keys[3], (24, 8)) + jnp.array([3.0] * 3 + [0.0] * 5)
  w, idx = jax.lax.top_k(jax.nn.sigmoid(logits), 2)
  return x, idx.astype(jnp.int32), w, gate_up, down


PATHS = {
    'ragged': gm.ragged_ffn,
    'capacity': gm.capacity_ffn,  # 8 slots per expert: experts 0-2 overflow.
    'capacity_no_overflow': functools.partial(gm.capacity_ffn, capacity=48),
    'capacity_16_tile_16': functools.partial(gm.capacity_ffn, capacity=16, tile=16),
}


@pytest.mark.parametrize('path', list(PATHS))
def test_every_path_equals_the_dense_reference_with_gradients(problem, path):
  x, idx, w, gate_up, down = problem
  sizes = np.bincount(np.asarray(idx).ravel(), minlength=8)
  assert sizes.max() > gm.default_capacity(48, 8) and sizes.min() == 0, sizes

  def loss(f, x, w, gate_up, down):
    return jnp.sum(f(x, idx, w, gate_up, down) ** 2)

  both = jax.jit(lambda f, *a: jax.value_and_grad(functools.partial(loss, f),
                                                   argnums=(0, 1, 2, 3))(*a),
                 static_argnums=0)
  (got, g_got), (want, g_want) = (both(PATHS[path], x, w, gate_up, down),
                                  both(gm.dense_ffn, x, w, gate_up, down))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_every_assignment_in_one_expert_is_not_dropped(problem):
  x, _, _, gate_up, down = problem
  idx = jnp.zeros((24, 2), jnp.int32).at[:, 1].set(1)  # Experts 0 and 1 take all.
  w = jnp.full((24, 2), 0.5)
  np.testing.assert_allclose(gm.capacity_ffn(x, idx, w, gate_up, down),
                             gm.dense_ffn(x, idx, w, gate_up, down), rtol=1e-5,
                             atol=1e-6)


def test_dispatcher_picks_by_backend_and_rejects_unknown_paths():
  assert gm.choose_impl('auto', 'cpu') == 'capacity'
  assert gm.choose_impl('auto', 'gpu') == gm.choose_impl('auto', 'tpu') == 'ragged'
  assert gm.choose_impl('dense', 'gpu') == 'dense'
  assert gm.default_capacity(128, 16) == 12 and gm.default_capacity(4, 16) == 4
  with pytest.raises(ValueError, match="moe_impl='fast' is not one of"):
    gm.choose_impl('fast')
  with pytest.raises(ValueError, match="moe_impl='fast' is not one of"):
    presets.get_preset('llada2_tiny', moe_impl='fast')


def test_block_sampler_tokens_are_the_same_on_every_path():
  cfg = presets.get_preset('llada2_tiny', moe_impl='ragged')
  cfg = dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, eos=cfg.ids.pad))
  params = model.init_params(cfg, jax.random.key(0))
  prompt = np.random.default_rng(0).integers(0, 200, (2, 8))
  sc = block.BlockSamplingConfig(gen_length=8, block_length=8, steps=8)
  tokens = {impl: np.asarray(block.generate(
      params, prompt, jax.random.key(1), config=dataclasses.replace(cfg, moe_impl=impl),
      sampling=sc).tokens) for impl in ('ragged', 'capacity')}
  np.testing.assert_array_equal(tokens['capacity'], tokens['ragged'])


def test_bench_moe_prints_the_layer_and_block_tables():
  from tests.test_benchmarks import _run, _table  # pylint: disable=g-import-not-at-top
  out = _run('launch.bench_moe', '--preset=llada2_tiny', '--layer_rows=16',
             '--repeats=1', '--block_batch=1', '--prompt_length=8', '--gen_length=8',
             '--block_length=8', '--impls=ragged,capacity')
  layer = _table(out, '| rows |')
  assert [r[2] for r in layer] == ['ragged', 'capacity', 'dense', 'active dense']
  assert all(float(r[5]) < 1e-5 for r in layer)  # Max difference to dense.
  rows = _table(out, '| batch |')
  assert [(r[1], r[-1]) for r in rows] == [('ragged', 'yes'), ('capacity', 'yes')]
