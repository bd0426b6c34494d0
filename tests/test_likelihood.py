"""The ELBO estimator's mean equals its exact expectation (all masks enumerated)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.evaluation import likelihood
from dllm_jax import models as presets
from tests import support


@pytest.fixture(scope='module')
def sharp_model():
  # A large init scale makes predictions depend strongly on which tokens are
  # masked, so a wrong mask distribution or weight would move the expectation.
  cfg = presets.get_preset('tiny', d_model=32, n_layers=2, n_heads=2, d_ff=64,
                           max_len=32, init_std=0.3)
  return cfg, support.jit_init_params(cfg)


def _exact_negative_elbo(cfg, params, tokens, p, length, batch_size, prefix_only=False):
  """E over k ~ U{1..L}, rows j and uniform size-l_j subsets of sum CE * L / l.

  `prefix_only`: the expectation of a wrong estimator that always masks the first
  l answer tokens (to show the test can tell them apart).
  """
  subsets = [s for r in range(1, length + 1)
             for s in itertools.combinations(range(length), r)]
  rows = np.tile(tokens, (len(subsets), 1))
  for i, s in enumerate(subsets):
    rows[i, [p + j for j in s]] = cfg.mask_id
  seg = np.broadcast_to((np.arange(len(tokens)) < p + length).astype(np.int32),
                        rows.shape)
  logits = np.asarray(support.jit_forward(params, jnp.asarray(rows), jnp.asarray(seg),
                                         config=cfg), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, tokens[None, :, None], -1)[..., 0]  # [S, T]
  mean_by_size = {}
  for (i, s) in enumerate(subsets):
    if not prefix_only or s == tuple(range(len(s))):
      mean_by_size.setdefault(len(s), []).append(ce[i, [p + j for j in s]].sum())
  expected = 0.0
  for k in range(1, length + 1):
    for j in range(batch_size):
      l = (int(np.round(k + j * length / batch_size)) - 1) % length + 1
      expected += np.mean(mean_by_size[l]) * length / l
  return expected / (length * batch_size)


def test_mask_counts_follow_the_llada_formula():
  for length, b in [(5, 4), (7, 16), (1, 8)]:
    for seed in range(5):
      key = jax.random.key(seed)
      got = np.asarray(likelihood.mask_counts(key, jnp.asarray(length), b))
      k = int(jax.random.randint(key, (), 1, length + 1))
      want = (np.round(np.linspace(k, k + (b - 1) * length / b, b)).astype(int) - 1) % length + 1
      np.testing.assert_array_equal(got, want)


def test_answer_masks_hit_only_the_answer_with_the_requested_counts():
  counts = jnp.array([1, 3, 4])
  m = np.asarray(likelihood.answer_masks(jax.random.key(0), counts, jnp.asarray(2),
                                         jnp.asarray(4), 9))
  np.testing.assert_array_equal(m.sum(1), [1, 3, 4])
  assert not m[:, :2].any() and not m[:, 6:].any()


@pytest.mark.parametrize('batch_size', [4, 3])
def test_estimator_mean_matches_exact_expectation(sharp_model, batch_size):
  cfg, params = sharp_model
  p, length, t = 3, 4, 10
  tokens = np.array([cfg.bos_id, 5, 9, 40, 41, 42, 43, cfg.pad_id, cfg.pad_id,
                     cfg.pad_id], np.int32)
  exact = _exact_negative_elbo(cfg, params, tokens, p, length, batch_size)
  keys = jax.random.split(jax.random.key(1), 400)
  draws = np.asarray(jax.vmap(lambda k: likelihood.negative_elbo(
      params, jnp.asarray(tokens), jnp.asarray(p), jnp.asarray(length), k, config=cfg,
      mc_num=batch_size, batch_size=batch_size))(keys))
  stderr = draws.std() / math.sqrt(len(draws))
  # Tolerance: 4 standard errors of the mean of 400 independent estimates.
  assert abs(draws.mean() - exact) < 4 * stderr, (draws.mean(), exact, stderr)
  # The test can fail: masking the first l tokens instead of a uniform subset
  # would land outside the tolerance.
  wrong = _exact_negative_elbo(cfg, params, tokens, p, length, batch_size,
                               prefix_only=True)
  assert abs(wrong - exact) > 4 * stderr, (wrong, exact, stderr)


def test_log_likelihood_prefers_the_right_answer_after_training_on_it():
  """A model fitted to one continuation scores it above a wrong one."""
  from dllm_jax.training import optimizer as ol, train_step as ts
  cfg = presets.get_preset('tiny', d_model=32, n_layers=2, n_heads=2, d_ff=64,
                           max_len=32)
  opt, sched = ol.make_optimizer(lr=1e-2, total_steps=150, warmup_steps=5,
                                 decay_fraction=0.1, final_lr_ratio=0.1, b1=0.9,
                                 b2=0.95, weight_decay=0.0, clip_norm=1.0)
  state = ts.init_train_state(cfg, opt, jax.random.key(0))
  step = ts.make_train_step(cfg, opt, sched, random_length_prob=0.0)
  text = np.array([cfg.bos_id] + list(b'2+2=4.'), np.int32)
  batch = {'tokens': jnp.asarray(np.tile(text, (16, 1)))}
  for _ in range(150):
    state, _ = step(state, batch, jax.random.key(1))
  prompt = [cfg.bos_id] + list(b'2+2=')
  good = likelihood.log_likelihood(state.params, prompt, list(b'4.'), jax.random.key(2),
                                   config=cfg, mc_num=32, batch_size=16)
  bad = likelihood.log_likelihood(state.params, prompt, list(b'5.'), jax.random.key(2),
                                  config=cfg, mc_num=32, batch_size=16)
  assert good > bad + 1.0, (good, bad)


def test_log_likelihood_rejects_bad_input(sharp_model):
  cfg, params = sharp_model
  with pytest.raises(ValueError, match='answer is empty'):
    likelihood.log_likelihood(params, [1, 2], [], jax.random.key(0), config=cfg)
  with pytest.raises(ValueError, match='exceeds the model max_len'):
    likelihood.log_likelihood(params, [1] * 30, [2] * 5, jax.random.key(0), config=cfg)
  with pytest.raises(ValueError, match='not a multiple of batch_size'):
    likelihood.log_likelihood(params, [1], [2], jax.random.key(0), config=cfg,
                              mc_num=10, batch_size=4)


def test_eval_launcher_reports_all_three_modes(tmp_path, trained_workdir):
  import json
  import subprocess
  import sys
  from tests.support import REPO
  run = trained_workdir[0]  # Two steps of small_config(steps=2); only read here.
  pairs, mc = tmp_path / 'pairs.jsonl', tmp_path / 'mc.jsonl'
  pairs.write_text(json.dumps({'prompt': 'import ', 'answer': 'os'}) + '\n')
  mc.write_text(json.dumps({'prompt': 'x = ', 'choices': ['1', '2'], 'label': 0}) + '\n')
  expect = {'--mode=heldout': '-ELBO nats/token', f'--mode=pairs --data={pairs}':
            'mean log-likelihood', f'--mode=choice --data={mc}': '| examples | accuracy |'}
  for args, want in expect.items():
    r = subprocess.run([sys.executable, '-m', 'launch.eval',
                        f'--workdir={run}', '--mc_num=16', '--num_rows=2',
                        *args.split()], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and want in r.stdout, r.stderr[-2000:]
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"prompt": "x"}\n')
  r = subprocess.run([sys.executable, '-m', 'launch.eval', f'--workdir={run}',
                      '--mode=pairs', f'--data={bad}'], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode != 0 and "missing key(s) ['answer']" in r.stderr.splitlines()[-1]
