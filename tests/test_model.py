"""The mask predictor: shapes, presets, attention masking, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models as model
from dllm_jax import models as presets
from tests import support


def _small(**kw):
  return presets.get_preset('tiny', n_layers=2, d_model=32, n_heads=4, d_ff=64,
                            max_len=32, **kw)


def test_forward_shape_and_parameter_count():
  cfg = _small()
  params = support.jit_init_params(cfg)
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  logits = support.jit_forward(params, jnp.zeros((2, 10), jnp.int32), config=cfg)
  assert logits.shape == (2, 10, cfg.vocab_size)


def test_llada_8b_preset_has_the_published_shape():
  cfg = presets.get_preset('llada_8b')
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff) == (
      32, 4096, 32, 128, 12288)
  assert (cfg.vocab_size, cfg.max_len, cfg.rope_theta, cfg.norm_eps) == (
      126464, 4096, 500000.0, 1e-5)
  assert (cfg.mask_id, cfg.bos_id, cfg.eos_id, cfg.eot_id) == (
      126336, 126080, 126081, 126348)
  abstract = model.abstract_params(cfg)
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(abstract))
  assert n == cfg.num_params()
  assert 7.9e9 < n < 8.1e9
  blk = abstract['blocks'][0]
  assert set(blk) == {'q_proj', 'k_proj', 'v_proj', 'attn_out', 'ff_proj', 'up_proj',
                      'ff_out', 'attn_norm', 'ff_norm'}
  assert set(abstract) == {'wte', 'blocks', 'ln_f', 'ff_out'}
  assert not any('bias' in jax.tree_util.keystr(p)
                 for p, _ in jax.tree_util.tree_leaves_with_path(abstract))


def test_bidirectional_model_sees_the_future_and_causal_twin_does_not():
  tokens = jnp.array([[1, 2, 3, 4, 5, 6]])
  changed = tokens.at[0, 5].set(9)
  for causal in (False, True):
    cfg = _small(causal=causal)
    params = support.jit_init_params(cfg, 1)
    a = support.jit_forward(params, tokens, config=cfg)
    b = support.jit_forward(params, changed, config=cfg)
    first_diff = not np.allclose(a[0, 0], b[0, 0], atol=1e-6)
    assert first_diff == (not causal)


def test_segment_ids_stop_attention_across_documents():
  cfg = _small()
  params = support.jit_init_params(cfg, 2)
  doc_a, doc_b = jnp.array([5, 6, 7]), jnp.array([8, 9])
  packed = jnp.concatenate([doc_a, doc_b])[None]
  seg = jnp.array([[1, 1, 1, 2, 2]])
  pos = jnp.array([[0, 1, 2, 0, 1]])
  got = support.jit_forward(params, packed, seg, pos, config=cfg)
  want_a = support.jit_forward(params, doc_a[None], config=cfg)
  want_b = support.jit_forward(params, doc_b[None], config=cfg)
  np.testing.assert_allclose(got[0, :3], want_a[0], atol=1e-5)
  np.testing.assert_allclose(got[0, 3:], want_b[0], atol=1e-5)


def test_kv_lengths_equal_truncation_without_a_mask():
  """Row i attending to its first kv_lengths[i] keys equals running on the
  truncated row (bidirectional and causal, unrolled and scanned layers)."""
  tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, 200)
  for kw in ({}, {'causal': True}, {'scan_layers': True, 'remat': 'full'}):
    cfg = _small(**kw)
    params = support.jit_init_params(cfg, 5)
    got = support.jit_forward(params, tokens, config=cfg, kv_lengths=jnp.array([6, 3]))
    for i, n in enumerate((6, 3)):
      want = support.jit_forward(params, tokens[i:i + 1, :n], config=cfg)
      np.testing.assert_allclose(got[i, :n], want[0], atol=1e-5, err_msg=str(kw))


# bf16 runs its gradient eagerly (see below): a minute on a loaded CPU, so -m slow.
@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=pytest.mark.slow)])
def test_onehot_embedding_gradient_equals_the_scatter(dtype):
  tokens = jnp.array([[3, 7, 3, 0, 255], [7, 7, 1, 2, 3]])  # Repeated ids.
  grads = {}
  for how in ('scatter', 'onehot'):
    cfg = _small(embed_grad=how, dtype=dtype)
    params = support.jit_init_params(cfg, 6)
    loss = lambda p: jnp.sum(model.forward(p, tokens, config=cfg).astype(jnp.float32) ** 2)
    # float32 under jit (eagerly every op compiles alone); bf16 stays eager:
    # jitted fusions round bf16 differently from the op-by-op path its rtol fits.
    grad = jax.jit(jax.grad(loss)) if dtype == 'float32' else jax.grad(loss)
    grads[how] = grad(params)
  # bf16: the scatter adds repeated rows in bf16, the product in float32.
  rtol = 1e-5 if dtype == 'float32' else 1e-2
  for a, b in zip(jax.tree.leaves(grads['onehot']), jax.tree.leaves(grads['scatter'])):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
  wte = np.asarray(grads['onehot']['wte']['embedding'])
  assert np.abs(wte[[0, 1, 2, 3, 7, 255]]).sum(1).min() > 0  # Used rows get grads,
  assert np.all(wte[[4, 5, 6, 8]] == 0)  # unused rows none.


def test_bf16_compute_keeps_fp32_params():
  cfg = _small(dtype='bfloat16')
  params = support.jit_init_params(cfg, 3)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = support.jit_forward(params, jnp.zeros((1, 8), jnp.int32), config=cfg)
  assert logits.dtype == jnp.bfloat16
  ref = support.jit_forward(params, jnp.zeros((1, 8), jnp.int32), config=_small())
  np.testing.assert_allclose(np.asarray(logits, np.float32), ref, atol=0.05)


def test_rope_is_relative():
  """Shifting all positions leaves the output unchanged."""
  cfg = _small()
  params = support.jit_init_params(cfg, 4)
  tokens = jnp.array([[3, 1, 4, 1, 5]])
  pos = jnp.arange(5)[None]
  a = support.jit_forward(params, tokens, None, pos, config=cfg)
  b = support.jit_forward(params, tokens, None, pos + 7, config=cfg)
  np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize('kw,match', [
    (dict(d_model=30), 'not divisible by n_heads'),
    (dict(dtype='float16'), "dtype='float16'"),
    (dict(vocab_size=100), 'outside the vocabulary'),
])
def test_bad_model_config_is_rejected(kw, match):
  with pytest.raises(ValueError, match=match):
    presets.get_preset('tiny', **kw)


def test_unknown_preset_is_rejected():
  with pytest.raises(ValueError, match="unknown model preset 'huge'"):
    presets.get_preset('huge')


def test_output_window_equals_slice_of_full_logits():
  cfg = _small()
  params = support.jit_init_params(cfg, 5)
  tokens = jax.random.randint(jax.random.key(6), (2, 12), 0, 256)
  full = support.jit_forward(params, tokens, config=cfg)
  win = jax.jit(lambda s: model.forward(params, tokens, config=cfg,
                                        output_window=(s, 4)))(jnp.asarray(5))
  np.testing.assert_allclose(win, full[:, 5:9], atol=1e-5)
