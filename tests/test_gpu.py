"""GPU-only checks (pytest -m gpu); skipped by default and where no GPU is present."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import model, presets
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


def test_bf16_sampler_runs_and_fills_every_mask():
  cfg = _cfg()
  params = model.init_params(cfg, jax.random.key(0))
  sc = gen.SamplingConfig(steps=32, gen_length=64, block_length=16, temperature=1.0,
                          cfg_scale=1.0)
  out = gen.generate(params, np.ones((4, 16), np.int32), jax.random.key(1),
                     config=cfg, sampling=sc)
  assert not np.any(np.asarray(out) == cfg.mask_id)
