"""GPU-only checks (pytest -m gpu); skipped by default and where no GPU is present."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.sampling import generate as gen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a GPU'),
]


def _cfg(**kw):
  return presets.get_preset('small', **{'n_layers': 2, 'max_len': 512,
                                        'dtype': 'bfloat16', **kw})


def test_bf16_on_gpu_picks_cudnn_attention():
  assert model.attention_impl(_cfg()) == 'cudnn'
  assert model.attention_impl(_cfg(dtype='float32')) == 'xla'


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('packed', [False, True])
def test_cudnn_attention_matches_xla(packed, causal):
  params = model.init_params(_cfg(), jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 256), 0, 256)
  seg = jnp.where(jnp.arange(256) < 100, 1, 2)[None].repeat(2, 0) if packed else None
  out = {impl: model.forward(params, tokens, seg,
                             config=_cfg(attention_impl=impl, causal=causal))
         for impl in ('xla', 'cudnn')}
  np.testing.assert_allclose(np.asarray(out['cudnn'], np.float32),
                             np.asarray(out['xla'], np.float32), atol=0.1)


@pytest.mark.parametrize('causal', [False, True])
def test_cudnn_kv_lengths_match_xla_forward_and_gradient(causal):
  """The mask-free truncation the pretraining step uses on unpacked batches."""
  params = model.init_params(_cfg(), jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 256), 0, 256)
  lengths = jnp.array([256, 131])

  def loss(p, impl):
    logits = model.forward(p, tokens, config=_cfg(attention_impl=impl, causal=causal),
                           kv_lengths=lengths)
    keep = jnp.arange(256)[None] < lengths[:, None]
    sq = jnp.square(logits.astype(jnp.float32))
    return jnp.sum(jnp.where(keep[..., None], sq, 0.0)) / keep.sum()
  (lx, gx), (lc, gc) = (jax.value_and_grad(loss)(params, impl)
                        for impl in ('xla', 'cudnn'))
  np.testing.assert_allclose(float(lc), float(lx), rtol=2e-2)
  for a, b in zip(jax.tree.leaves(gc), jax.tree.leaves(gx)):
    scale = float(jnp.max(jnp.abs(b))) + 1e-6
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=5e-2)


def test_bf16_sampler_runs_and_fills_every_mask():
  cfg = _cfg()
  params = model.init_params(cfg, jax.random.key(0))
  sc = gen.SamplingConfig(steps=32, gen_length=64, block_length=16, temperature=1.0,
                          cfg_scale=1.0)
  out = gen.generate(params, np.ones((4, 16), np.int32), jax.random.key(1),
                     config=cfg, sampling=sc)
  assert not np.any(np.asarray(out) == cfg.mask_id)


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_compiled_kernel_equals_twin_at_llada_vocabulary(temperature):
  from dllm_jax.kernels import fused
  logits = (jax.random.normal(jax.random.key(0), (4 * 384 + 5, 126_464)) * 3).astype(
      jnp.bfloat16)
  seed = fused.seed_from_key(jax.random.key(1))
  kw = dict(temperature=temperature, mask_id=126_336, eos_id=126_081)
  want = jax.jit(lambda x: fused.candidates_jnp(x, seed, **kw))(logits)
  got = jax.jit(lambda x: fused.candidates_pallas(x, seed, **kw))(logits)
  # bf16 inputs, float32 math in both: exact candidates but for float-rounding
  # near-ties in the exp sums; confidences to float tolerance.
  assert np.mean(np.asarray(got[0]) == np.asarray(want[0])) > 0.999
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_compiled_head_kernel_equals_head_then_twin_at_llada_shape(temperature):
  """The fused head + candidate kernel (Triton) against the head matmul followed
  by the twin: hidden [101, 4096] x head [4096, 126,464], bf16 (ragged rows)."""
  from dllm_jax.kernels import fused
  from dllm_jax.kernels import fused_head
  assert fused_head.use_kernel()  # The probe compiles and agrees.
  hidden = jax.random.normal(jax.random.key(0), (101, 4096)).astype(jnp.bfloat16)
  head = (jax.random.normal(jax.random.key(2), (4096, 126_464)) * 3 / 64).astype(
      jnp.bfloat16)
  seed = fused.seed_from_key(jax.random.key(1))
  kw = dict(temperature=temperature, mask_id=126_336, eos_id=126_081,
            logits_dtype=jnp.bfloat16)
  want = jax.jit(lambda h, w: fused_head.head_candidates_jnp(h, w, seed, **kw))(
      hidden, head)
  got = jax.jit(lambda h, w: fused_head.head_candidates_pallas(h, w, seed, **kw))(
      hidden, head)
  # The matmuls add D products in different orders: exact candidates but for
  # near-ties; confidences to float tolerance.
  assert np.mean(np.asarray(got[0]) == np.asarray(want[0])) > 0.98
  np.testing.assert_allclose(got[1], want[1], rtol=1e-3, atol=1e-6)


def test_dual_cache_threshold_sampler_runs_bf16_with_the_kernel():
  from dllm_jax.kernels import fused
  assert fused.use_kernel()  # The probe compiles here (first called untraced).
  cfg = _cfg()
  params = model.init_params(cfg, jax.random.key(0))
  # Temperature 0 and 12 x 32 = 384 block rows: where the dispatcher picks the
  # kernel (fused.KERNEL_ROWS).
  sc = gen.SamplingConfig(steps=32, gen_length=64, block_length=32, cache='dual',
                          parallel='threshold', noise='counter', temperature=0.0)
  state = gen.sample(params, np.full((12, 16), 65), jax.random.key(1), config=cfg,
                     sampling=sc)
  assert not np.any(np.asarray(state.tokens)[:, 16:] == cfg.mask_id)


@pytest.mark.parametrize('layout', ['documents', 'one_document', 'too_many', 'split_id'])
def test_cudnn_packed_attention_matches_xla_forward_and_gradient(layout):
  """cuDNN's packed layout (one flash attention per document, no mask) against
  XLA's masked attention; 'too_many' / 'split_id' take attend_packed's masked
  fallback."""
  from dllm_jax.models import attention
  b, t, h, d = 2, 256, 4, 64
  q, k, v = (jax.random.normal(jax.random.key(i), (b, t, h, d), jnp.bfloat16)
             for i in range(3))
  pos = jnp.arange(t)
  seg = {
      'documents': jnp.stack([1 + (pos >= 100) + (pos >= 180) - 3 * (pos >= 240),
                              1 + (pos >= 17)]),
      'one_document': jnp.ones((b, t), jnp.int32),
      'too_many': jnp.broadcast_to(pos // 8, (b, t)),
      'split_id': jnp.broadcast_to(1 + (pos >= 64) - (pos >= 128), (b, t)),
  }[layout].astype(jnp.int32)
  fits = bool(attention.packed_layout(seg)[2])
  assert fits == (layout in ('documents', 'one_document'))
  spec = attention.AttentionSpec(segment_ids=seg)
  w = jax.random.normal(jax.random.key(9), (b, t, h, d), jnp.float32)

  def loss(q, k, v, impl):
    out = attention.attend(q, k, v, spec, implementation=impl)
    return jnp.sum(out.astype(jnp.float32) * w)
  (lx, gx), (lp, gp) = (jax.jit(jax.value_and_grad(loss, (0, 1, 2)),
                                static_argnums=3)(q, k, v, impl)
                        for impl in ('xla', 'cudnn_packed'))
  out_x, out_p = (attention.attend(q, k, v, spec, implementation=i)
                  for i in ('xla', 'cudnn_packed'))
  np.testing.assert_allclose(np.asarray(out_p, np.float32),
                             np.asarray(out_x, np.float32), atol=3e-2)
  np.testing.assert_allclose(float(lp), float(lx), rtol=2e-2, atol=1.0)
  for a, c in zip(gp, gx):
    scale = float(jnp.max(jnp.abs(c.astype(jnp.float32)))) + 1e-6
    np.testing.assert_allclose(np.asarray(a, np.float32) / scale,
                               np.asarray(c, np.float32) / scale, atol=3e-2)


def test_cudnn_packed_train_step_loss_equals_masked():
  """The pretraining step on packed rows: same loss with the packed layout as
  with cuDNN's masked path."""
  from launch import step_timing
  losses = {}
  for impl in ('cudnn', 'cudnn_packed'):
    cfg = _cfg(attention_impl=impl)
    losses[impl] = step_timing.time_train_step(cfg, 2, 256, steps=1, warmup=1,
                                               segments=5, log=lambda m: None).loss
  np.testing.assert_allclose(losses['cudnn_packed'], losses['cudnn'], rtol=1e-2)
