"""Expert parallelism on 8 simulated devices (tests/moe_sharding_worker.py, one
subprocess): a train step on meshes with an `expert` axis equals one device."""

import numpy as np
import pytest

from tests.support import run_worker

LR = 1e-3  # The worker's learning rate.


def _run_worker(*args):
  return run_worker('tests.moe_sharding_worker', *args, timeout=1800)


@pytest.fixture(scope='module')
def expert_meshes():
  return _run_worker()


@pytest.fixture(scope='module')
def every_expert_mesh():
  return _run_worker('all')


def _check(results, shape):
  got = results['meshes'][shape]
  np.testing.assert_allclose(got['loss'], results['ref_loss'], rtol=1e-5)
  # As tests/test_sharding.py: AdamW moves a parameter by about lr * sign(grad);
  # a summation-order difference in a near-zero gradient may flip it.
  assert got['max_param_diff'] <= 1e-2 * LR, got
  data, fsdp, tensor, expert = eval(shape)  # pylint: disable=eval-used
  assert got['all_to_all'], 'tokens must be exchanged with all-to-all'
  assert got['experts_spec'] == "P('expert', 'fsdp', None, 'tensor')", got
  # Each device holds its experts' slice: [E / expert, D / fsdp, 2, I / tensor].
  assert got['experts_shard'] == [8 // expert, 64 // fsdp, 2, 32 // tensor], got


# Expert x fsdp x tensor in the default run; expert x data and the rest: slow.
@pytest.mark.parametrize('shape', ['(1, 2, 2, 2)'])
def test_train_step_on_an_expert_mesh_equals_one_device(expert_meshes, shape):
  _check(expert_meshes, shape)


@pytest.mark.slow
@pytest.mark.parametrize('shape', ['(2, 1, 1, 4)', '(1, 2, 2, 2)', '(1, 2, 1, 4)',
                                   '(1, 1, 2, 4)'])
def test_train_step_on_every_expert_mesh_equals_one_device(every_expert_mesh, shape):
  _check(every_expert_mesh, shape)


@pytest.mark.slow
def test_sampler_on_an_expert_mesh_gives_the_same_tokens(every_expert_mesh):
  assert every_expert_mesh['sampler']
