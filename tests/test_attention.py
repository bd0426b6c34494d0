"""The attention spec: each rule equals a hand-built mask, windows equal rows of
the full attention, and the block-causal KV cache is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.models import attention
from dllm_jax import models as model
from dllm_jax import models as presets
from tests import support


def _small(**kw):
  return presets.get_preset('tiny', n_layers=2, d_model=32, n_heads=4, d_ff=64,
                            max_len=32, **kw)


def _hand_mask(t, *, causal=False, block=0, seg=None, kv_len=None):
  m = np.ones((t, t), bool)
  for i in range(t):
    for j in range(t):
      if causal and j > i:
        m[i, j] = False
      if block and j // block > i // block:
        m[i, j] = False
      if seg is not None and seg[i] != seg[j]:
        m[i, j] = False
      if kv_len is not None and j >= kv_len:
        m[i, j] = False
  return m


@pytest.mark.parametrize('kw', [dict(causal=True), dict(block=3), dict(seg=[1, 1, 2, 2, 2, 0, 0]),
                                dict(block=2, seg=[1, 1, 1, 2, 2, 2, 2]),
                                dict(causal=True, kv_len=5)])
def test_build_mask_equals_a_hand_built_mask(kw):
  t = 7
  spec = attention.AttentionSpec(
      causal=kw.get('causal', False), block_size=kw.get('block', 0),
      segment_ids=None if 'seg' not in kw else jnp.asarray([kw['seg']]),
      kv_lengths=None if 'kv_len' not in kw else jnp.asarray([kw['kv_len']]))
  got = np.asarray(attention.build_mask(spec, t, t))[0, 0]
  np.testing.assert_array_equal(got, _hand_mask(t, **kw))
  # A window of queries [2, 5) is those rows.
  win = np.asarray(attention.build_mask(spec, 3, t, q_start=2))[0, 0]
  np.testing.assert_array_equal(win, _hand_mask(t, **kw)[2:5])


def test_block_causal_forward_equals_the_explicit_mask():
  cfg = _small()
  params = support.jit_init_params(cfg)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 250)
  mask = jnp.asarray(_hand_mask(12, block=4))[None, None]
  a = model.forward(params, tokens, config=cfg, attention=attention.block_causal(4))
  b = model.forward(params, tokens, config=cfg,
                    attention=attention.AttentionSpec(mask=jnp.broadcast_to(
                        mask, (2, 1, 12, 12))))
  # Eager on purpose: jitted, the two paths fuse differently and differ in the last bit.
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Block-causal: the first block does not see the second, the second sees the first.
  changed = tokens.at[:, 5].set(7)
  c = model.forward(params, changed, config=cfg, attention=attention.block_causal(4))
  np.testing.assert_allclose(c[:, :4], a[:, :4], atol=1e-6)
  assert not np.allclose(c[:, 8:], a[:, 8:], atol=1e-6)


def test_block_causal_cache_is_exact():
  """Prefill the first two blocks, then each window of block 3 against the
  cache gives the full block-causal forward's rows (no approximation)."""
  cfg = _small()
  params = support.jit_init_params(cfg)
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 250)

  @jax.jit  # One compile; eagerly every op of three forwards compiles alone.
  def run(params, tokens):
    spec = attention.block_causal(4)
    full = model.forward(params, tokens, config=cfg, attention=spec)
    _, cache = model.forward_with_cache(params, tokens, config=cfg, attention=spec,
                                        output_window=(0, 4))
    logits, _ = model.forward_window(params, tokens[:, 8:], 8, cache, config=cfg,
                                     attention=spec, output_length=4)
    return logits, full[:, 8:]
  logits, want = run(params, tokens)
  np.testing.assert_allclose(logits, want, atol=1e-5)


def test_grouped_query_attention_reads_shared_key_value_heads():
  q = jax.random.normal(jax.random.key(0), (1, 5, 4, 8))
  k = jax.random.normal(jax.random.key(1), (1, 5, 2, 8))
  v = jax.random.normal(jax.random.key(2), (1, 5, 2, 8))
  attend = jax.jit(lambda q, k, v: attention.attend(q, k, v, attention.causal()))
  rep = lambda x: jnp.repeat(x, 2, axis=2)  # Query head h reads kv head h // 2.
  np.testing.assert_allclose(attend(q, k, v), attend(q, rep(k), rep(v)), atol=1e-6)


def test_a_spec_is_causal_or_block_causal_not_both():
  with pytest.raises(ValueError, match='not both'):
    attention.AttentionSpec(causal=True, block_size=4)
  with pytest.raises(ValueError, match='positive'):
    attention.block_causal(0)


def _packed_layout_reference(seg, m):
  """NumPy: run lengths / starts padded with -1, and whether the rows fit."""
  b, t = seg.shape
  lens, offs, fits = -np.ones((b, m), np.int32), -np.ones((b, m + 1), np.int32), True
  for r in range(b):
    starts = [0] + [i for i in range(1, t) if seg[r, i] != seg[r, i - 1]]
    fits &= len(starts) <= m and len(starts) == len(set(seg[r].tolist()))
    bounds = starts + [t]
    for j, s in enumerate(starts[:m]):
      offs[r, j] = s
      lens[r, j] = (bounds[j + 1] if j + 1 < m else t) - s
  return lens, offs, fits


@pytest.mark.parametrize('rows', [
    [[1, 1, 1, 2, 2, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],  # docs + padding; one doc
    [[1, 2, 3, 4, 5, 6, 7, 7], [1, 1, 1, 1, 1, 1, 1, 1]],  # more runs than M
    [[3, 3, 1, 1, 3, 3, 0, 0], [2, 2, 2, 2, 2, 2, 2, 2]],  # an id in two runs
])
def test_packed_layout_equals_numpy(rows):
  """The cuDNN packed description (attention.attend_packed on a GPU;
  tests/test_gpu.py compares that path with XLA's masked attention)."""
  seg = np.array(rows, np.int32)
  got = attention.packed_layout(jnp.asarray(seg), 4)
  want = _packed_layout_reference(seg, 4)
  np.testing.assert_array_equal(np.asarray(got[0])[np.asarray(got[0]) >= 0],
                                want[0][want[0] >= 0])
  if want[2]:
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])
  assert bool(got[2]) == want[2]
