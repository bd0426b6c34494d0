"""The model-family seam: a toy family defined here, registered from this file,
trains, samples and restores through the public API without library changes."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dllm_jax
from dllm_jax import models
from dllm_jax.models import attention
from dllm_jax import tokenizers as tokenizer_lib
from dllm_jax.training import trainer
from tests.support import small_config


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  """One attention layer with a residual and an output head."""

  family: ClassVar[str] = 'toy'
  vocab_size: int = 264
  d_model: int = 16
  max_len: int = 64
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  causal: bool = False
  ids: tokenizer_lib.SpecialIds = tokenizer_lib.BYTE_IDS

  def num_params(self) -> int:
    return 2 * self.vocab_size * self.d_model + 3 * self.d_model**2 + self.max_len * self.d_model

  def num_active_params(self) -> int:
    return self.num_params()

  def forward_flops_per_token(self, seq_len: int) -> float:
    return 2.0 * (3 * self.d_model**2 + 2 * seq_len * self.d_model +
                  self.vocab_size * self.d_model)


class Toy(nnx.Module):

  def __init__(self, cfg: ToyConfig, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.emb = nnx.Param(init(rngs.params(), (cfg.vocab_size, cfg.d_model)))
    self.pos = nnx.Param(init(rngs.params(), (cfg.max_len, cfg.d_model)))
    self.qkv = nnx.Param(init(rngs.params(), (cfg.d_model, 3, cfg.d_model)))
    self.head = nnx.Param(init(rngs.params(), (cfg.d_model, cfg.vocab_size)))

  def kv(self, tokens, positions):
    x = self.emb[...][tokens] + self.pos[...][positions]
    q, k, v = jnp.moveaxis(jnp.einsum('bld,dce->blce', x, self.qkv[...]), 2, 0)
    return x, q[:, :, None], k[:, :, None], v[:, :, None]  # One head.

  def out(self, x, q, k, v, spec, q_start=None):
    o = attention.attend(q, k, v, spec, q_start=q_start)[:, :, 0]
    return (x + o) @ self.head[...]


def _positions(positions, b, l):
  return jnp.broadcast_to(jnp.arange(l), (b, l)) if positions is None else positions


def _merge(cfg, params):
  graph = nnx.split(nnx.eval_shape(lambda: Toy(cfg, nnx.Rngs(0))))[0]
  return nnx.merge(graph, params)


def _init(cfg, key):
  return nnx.to_pure_dict(nnx.state(Toy(cfg, nnx.Rngs(params=key)), nnx.Param))


def _forward(params, tokens, spec, positions=None, *, config, output_window=None):
  return _prefill(params, tokens, spec, positions, config=config,
                  output_window=output_window or (0, tokens.shape[1]))[0]


def _prefill(params, tokens, spec, positions=None, *, config, output_window):
  m = _merge(config, params)
  x, q, k, v = m.kv(tokens, _positions(positions, *tokens.shape))
  logits = m.out(x, q, k, v, spec)
  return jax.lax.dynamic_slice_in_dim(logits, output_window[0], output_window[1],
                                      axis=1), (k, v)


def _window(params, tokens, start, cache, spec, positions=None, *, config,
            output_length):
  m = _merge(config, params)
  b, w = tokens.shape
  pos = jax.lax.dynamic_slice_in_dim(_positions(positions, b, cache[0].shape[1]),
                                     start, w, axis=1)
  x, q, k, v = m.kv(tokens, pos)
  k = jax.lax.dynamic_update_slice_in_dim(cache[0], k, start, axis=1)
  v = jax.lax.dynamic_update_slice_in_dim(cache[1], v, start, axis=1)
  return m.out(x, q, k, v, spec, q_start=start)[:, :output_length], (k, v)


TOY = models.Family(
    name='toy', config_cls=ToyConfig, presets={'toy_tiny': {}}, init_params=_init,
    forward=_forward, prefill=_prefill, window=_window,
    param_axes=lambda names, ndim: (None,) * ndim, compute_fields=('dtype',))
models.register(TOY)


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('toy'))
  config = small_config(steps=4, checkpoint_every=4)
  config.model.family, config.model.preset = 'toy', 'toy_tiny'
  config.model.d_model = config.model.n_layers = config.model.n_heads = None
  config.model.d_ff = config.model.max_len = None
  config.sample.num_samples = 1
  state = trainer.train(config, workdir)
  return workdir, state


def test_toy_family_trains_and_restores_through_the_public_api(toy_run):
  workdir, state = toy_run
  cfg, params, tokenizer = dllm_jax.restore_for_inference(workdir)
  assert isinstance(cfg, ToyConfig) and tokenizer.name == 'byte'
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('cache', ['none', 'dual'])
def test_toy_family_samples_with_every_cache(toy_run, cache):
  workdir, _ = toy_run
  cfg, params, tokenizer = dllm_jax.restore_for_inference(workdir)
  prompt = tokenizer.encode('def ', add_bos=True)[None]
  sampling = dllm_jax.SamplingConfig(steps=8, gen_length=8, block_length=4, cache=cache)
  out = dllm_jax.generate(params, prompt, jax.random.key(0), config=cfg,
                          sampling=sampling)
  assert out.shape == (1, prompt.shape[1] + 8)
  assert not np.any(np.asarray(out) == cfg.ids.mask)


def test_registry_refuses_clashes_and_unknown_names():
  with pytest.raises(ValueError, match='already'):
    models.register(dataclasses.replace(TOY))
  with pytest.raises(ValueError, match='unknown model family'):
    models.get('nope')
  assert models.config_from_dict(models.config_to_dict(ToyConfig())) == ToyConfig()
