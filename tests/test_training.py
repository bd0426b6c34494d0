"""Optimizer schedule, train step, checkpoint/resume and restore for inference."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models as presets
from dllm_jax.data import pipeline
from dllm_jax.tokenizers import ByteTokenizer
from dllm_jax.training import checkpoint, optimizer as optimizer_lib, trainer
from dllm_jax.training import train_step as ts
from tests.support import REPO, small_config


def test_wsd_schedule_warms_up_holds_and_decays():
  sched = optimizer_lib.wsd_schedule(1.0, total_steps=100, warmup_steps=10,
                                     decay_fraction=0.2, final_lr_ratio=0.1)
  lr = np.array([float(sched(i)) for i in range(101)])
  np.testing.assert_allclose(lr[[0, 5, 10]], [0.0, 0.5, 1.0], atol=1e-6)
  assert np.all(lr[10:81] == 1.0)
  np.testing.assert_allclose(lr[[90, 100]], [0.55, 0.1], atol=1e-6)


def _step_setup(grad_accum_steps, **step_kw):
  # One layer: the checks below compare whole steps, which a second layer only
  # makes slower to compile.
  cfg = presets.get_preset('tiny', d_model=32, n_layers=1, n_heads=2, d_ff=64,
                           max_len=64)
  opt, sched = optimizer_lib.make_optimizer(
      lr=1e-2, total_steps=10, warmup_steps=0, decay_fraction=0.0, final_lr_ratio=1.0,
      b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  state = ts.init_train_state(cfg, opt, jax.random.key(0))
  step = ts.make_train_step(cfg, opt, sched, grad_accum_steps=grad_accum_steps,
                            **step_kw)
  return state, step


def _batch():
  it = iter(pipeline.pretrain_dataset('stdlib', ByteTokenizer(), seq_len=32,
                                      batch_size=4, seed=0))
  return next(it)


# Two micro-batches in the default run; four (one row each) too under -m slow.
@pytest.mark.parametrize('splits', [(1, 2), pytest.param((1, 2, 4), marks=pytest.mark.slow)],
                         ids=['2', '2_and_4'])
def test_grad_accumulation_equals_one_big_batch(splits):
  batch = _batch()
  results = []
  for n in splits:
    state, step = _step_setup(n)
    state, metrics = step(state, batch, jax.random.key(1))
    results.append((float(metrics['loss']), float(metrics['grad_norm']), state.params))
  for loss, grad_norm, params in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-5)
    np.testing.assert_allclose(grad_norm, results[0][1], rtol=1e-5)
    # Adam's first update is about lr * sign(g): summation-order noise in a
    # near-zero gradient moves a parameter by up to ~1e-3 lr; allow 1% of lr.
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(results[0][2])):
      np.testing.assert_allclose(a, b, atol=1e-2 * 1e-2)


# The random length forced on (the `kv_lengths` cut) in the default run; forced
# off (the plain unmasked step, which the training tests run too) under -m slow.
@pytest.mark.parametrize('prob', [1.0, pytest.param(0.0, marks=pytest.mark.slow)])
def test_unmasked_truncation_step_equals_the_segment_masked_step(prob):
  """A batch without segment ids cuts the 1%-of-batches random length with
  `kv_lengths` (no attention mask); it must equal the one-segment masked step."""
  tokens = _batch()['tokens']
  out = []
  for batch in ({'tokens': tokens},
                {'tokens': tokens, 'segment_ids': np.ones_like(tokens)}):
    state, step = _step_setup(1, random_length_prob=prob)
    state, metrics = step(state, batch, jax.random.key(3))
    out.append((float(metrics['loss']), float(metrics['grad_norm']), state.params))
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
  np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out[0][2]), jax.tree.leaves(out[1][2])):
    np.testing.assert_allclose(a, b, atol=1e-2 * 1e-2)


def test_train_step_reduces_loss_on_a_fixed_batch():
  batch = _batch()
  state, step = _step_setup(1)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.key(2))  # Same noise each step.
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.7 * losses[0], losses


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path):
  config = small_config()
  config.sample.num_samples = 0  # Parameters are checked, not the end-of-run sample.
  full = trainer.train(config, str(tmp_path / 'full'))
  trainer.train(config, str(tmp_path / 'split'), stop_after=2)
  assert checkpoint.read_meta(str(tmp_path / 'split'))['step'] == 2
  resumed = trainer.train(config, str(tmp_path / 'split'))
  assert int(resumed.step) == int(full.step) == 6
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(a, b)  # Bitwise on CPU.
  for a, b in zip(jax.tree.leaves(resumed.opt_state), jax.tree.leaves(full.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_restore_for_inference_on_one_device(trained_workdir):
  workdir, trained = trained_workdir
  model_cfg, params, tokenizer = checkpoint.restore_for_inference(workdir)
  assert model_cfg == trainer.model_config(small_config(steps=2))
  assert tokenizer == ByteTokenizer()
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(a, b)
    assert a.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_restore_from_workdir_without_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    checkpoint.restore_for_inference(str(tmp_path))


def test_autoregressive_twin_trains_with_next_token_loss(tmp_path):
  config = small_config(steps=2, objective='next_token')
  assert trainer.model_config(config).causal
  state = trainer.train(config, str(tmp_path))
  assert int(state.step) == 2


# Stream packing under the autoregressive twin: -m slow (the default run trains
# each on its own: the pretrain case here, the causal one above).
@pytest.mark.parametrize('objective', [
    'pretrain', pytest.param('next_token', marks=pytest.mark.slow)])
def test_stream_packing_trains_without_document_masks(tmp_path, objective):
  """data.packing=stream: batches of tokens alone reach the mask-free step."""
  config = small_config(steps=2, objective=objective)
  config.data.packing = 'stream'
  config.sample.num_samples = 0  # The step is checked, not the end-of-run sample.
  state = trainer.train(config, str(tmp_path))
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize('override,match', [
    ('--config.train.stepz=3', 'stepz'),
    ('--config.train.objective=mlm', "unknown train.objective 'mlm'"),
    ('--config.model.preset=llada_8b', 'does not match the byte tokenizer'),
])
def test_train_launcher_rejects_bad_config_in_one_line(tmp_path, override, match):
  r = subprocess.run([sys.executable, '-m', 'launch.train', f'--workdir={tmp_path}',
                      override], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert match in lines[-1], r.stderr
  assert 'Traceback' not in r.stderr, r.stderr


def test_sample_launcher_without_checkpoint_is_one_line(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'launch.sample', f'--workdir={tmp_path}',
                      '--prompt=x'], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode != 0
  assert 'Traceback' not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith('error: no checkpoint in')


def test_parameter_fingerprint_is_exact_and_layout_free():
  params = {'a': jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
            'b': jnp.ones((5,), jnp.bfloat16)}
  fp = checkpoint.fingerprint(params)
  assert fp == checkpoint.fingerprint(jax.tree.map(np.asarray, params))
  nudged = dict(params, a=params['a'].at[2, 3].set(np.nextafter(np.float32(11), np.float32(12))))
  assert checkpoint.fingerprint(nudged) != fp
  swapped = dict(params, a=params['a'][::-1])  # Same values, other places.
  assert checkpoint.fingerprint(swapped) != fp
