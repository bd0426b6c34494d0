"""The block NELBO of block-diffusion checkpoints (dllm_jax/evaluation/block_likelihood.py)
against a NumPy reference that conditions each block on the clean blocks before
it through its own forward (as the block sampler's cache does), and its use by
launch.eval and the lm-eval model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.evaluation import block_likelihood
from dllm_jax.evaluation import likelihood
from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.models.attention import AttentionSpec
from tests import support

CFG = presets.get_preset('tiny', d_model=32, n_layers=1, n_heads=2, d_ff=48, max_len=64)
BLOCK, PROMPT, ANSWER, T = 4, 5, 11, 32  # Ragged: the answer starts mid-block.


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_block_nelbo_equals_the_numpy_reference_on_a_tiny_model():
  params = support.jit_init_params(CFG, seed=2)
  rng = np.random.default_rng(0)
  tokens = np.full(T, CFG.ids.pad, np.int32)
  tokens[:PROMPT + ANSWER] = rng.integers(0, 256, PROMPT + ANSWER)
  key = jax.random.key(7)
  got = float(likelihood.negative_elbo(
      params, jnp.asarray(tokens), jnp.asarray(PROMPT), jnp.asarray(ANSWER), key,
      config=CFG, mc_num=4, batch_size=2, block_size=BLOCK))

  pos = np.arange(T)
  seg = (pos < PROMPT + ANSWER).astype(np.int32)
  maskable = (pos >= PROMPT) & (pos < PROMPT + ANSWER)
  groups = block_likelihood.block_ids(jnp.asarray(pos), jnp.asarray(seg), BLOCK)
  n_tok = PROMPT + ANSWER
  rows, terms = [], []  # One input per (Monte Carlo row, answer block): one forward.
  for k in jax.random.split(key, 2):  # The scan's Monte Carlo batches.
    masked, _ = block_likelihood.draw_masks(k, groups, jnp.asarray(maskable), 2)
    masked = np.asarray(masked)
    assert not np.any(masked & ~maskable)
    for row in masked:
      rows.append([])
      for start in range(0, n_tok, BLOCK):  # One document: blocks of 4.
        end = min(start + BLOCK, n_tok)
        n = maskable[start:end].sum()
        if n == 0:
          continue
        l = row[start:end].sum()
        assert 1 <= l <= n  # Every answer block is scored in every row.
        # Clean earlier blocks, then this block with its masks; what follows
        # cannot matter under block-causal attention.
        x = tokens[:n_tok].copy()
        x[start:end] = np.where(row[start:end], CFG.ids.mask, tokens[start:end])
        rows[-1].append(len(terms))
        terms.append((x, start, end, row[start:end], n / l))
  logits = jax.jit(lambda p, x: model.forward(
      p, x, config=CFG, attention=AttentionSpec(block_size=BLOCK)))(
          params, jnp.asarray(np.stack([t[0] for t in terms])))
  logp = _log_softmax(np.asarray(logits, np.float64))
  total = []
  for row in rows:
    est = 0.0
    for i in row:
      _, start, end, hit, weight = terms[i]
      ce = -logp[i, np.arange(start, end), tokens[start:end]]
      est += weight * ce[hit].sum()
    total.append(est)
  np.testing.assert_allclose(got, np.mean(total), rtol=2e-5)
  # Not the bidirectional ELBO under another name.
  elbo = float(likelihood.negative_elbo(
      params, jnp.asarray(tokens), jnp.asarray(PROMPT), jnp.asarray(ANSWER), key,
      config=CFG, mc_num=4, batch_size=2))
  assert abs(elbo - got) > 1e-3
  assert np.isclose(-got, likelihood.log_likelihood(
      params, tokens[:PROMPT], tokens[PROMPT:PROMPT + ANSWER], key, config=CFG,
      mc_num=4, batch_size=2, block_size=BLOCK), rtol=1e-6)
  with pytest.raises(ValueError, match='block likelihood has no classifier-free guidance'):
    likelihood.log_likelihood(params, tokens[:PROMPT], tokens[PROMPT:], key,
                              config=CFG, cfg_scale=1.0, block_size=BLOCK)


def test_eval_and_lm_eval_model_use_the_block_estimate(random_block_workdir, tmp_path):
  import json
  import subprocess
  import sys
  from dllm_jax.evaluation.harness import DllmJaxLM
  lm = DllmJaxLM(workdir=random_block_workdir, mc_num=4, mc_batch_size=2)
  assert lm.opts['block_size'] == 8 == lm.engine.trained_block_size
  with pytest.raises(ValueError, match='no classifier-free guidance'):
    DllmJaxLM(workdir=random_block_workdir, cfg_scale=0.5)
  pairs = tmp_path / 'pairs.jsonl'
  pairs.write_text(json.dumps({'prompt': 'import ', 'answer': 'os'}) + '\n')
  r = subprocess.run([sys.executable, '-m', 'launch.eval', f'--workdir={random_block_workdir}',
                      '--mode=heldout', '--mc_num=4', '--batch_size=2', '--num_rows=1'],
                     cwd=support.REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and 'block NELBO (block 8) nats/token' in r.stdout, r.stderr[-2000:]
