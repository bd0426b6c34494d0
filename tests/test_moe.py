"""The mixture-of-experts families (`llada_moe`, `llada2`): grouped dispatch vs
the dense reference, released-weight layouts vs an independent PyTorch forward,
export, training hooks, sampling with every cache, and the one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dllm_jax
from dllm_jax import models
from dllm_jax import models as model
from dllm_jax.interop import hf, moe_hf
from dllm_jax.models import moe, moe_transformer
from dllm_jax.training import optimizer as opt_lib, train_step as ts, trainer
from tests.support import small_config

torch = pytest.importorskip('torch')
from tests import moe_reference as ref  # pylint: disable=g-import-not-at-top

CONFIGS = {'llada2': ref.LLADA2_CONFIG, 'llada_moe': ref.LLADA_MOE_CONFIG}


@pytest.mark.parametrize('router', [pytest.param('softmax', marks=pytest.mark.slow),
                                    'sigmoid'])
def test_grouped_dispatch_equals_every_expert_on_every_token(router):
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (24, 16))
  gate_up = 0.3 * jax.random.normal(keys[1], (8, 16, 2, 8))
  down = 0.3 * jax.random.normal(keys[2], (8, 8, 16))
  # A large bias on experts 0-3 (selection only): experts 4-7 get no tokens.
  bias = jnp.array([5.0] * 4 + [0.0] * 4) if router == 'sigmoid' else None
  idx, w, _ = moe.route(jax.random.normal(keys[3], (24, 8)), router=router, top_k=2,
                        bias=bias, n_group=4 if bias is not None else 1, topk_group=2,
                        norm_topk_prob=bias is not None, scaling=2.5)
  if bias is not None:
    assert int(jnp.max(idx)) < 4
  both = jax.jit(lambda f, gu: jax.value_and_grad(
      lambda g: jnp.sum(f(x, idx, w, g, down) ** 2))(gu), static_argnums=0)
  (got, g_got), (want, g_want) = (both(moe.grouped_ffn, gate_up),
                                  both(moe.dense_reference, gate_up))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(g_got, g_want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """family -> (HF config, per-expert state dict, {layout: directory})."""
  out = {}
  for family, hc in CONFIGS.items():
    sd = ref.random_state_dict(hc, seed=len(family))
    dirs = {}
    for layout in ('experts', 'fused', 'w13'):
      path = str(tmp_path_factory.mktemp(f'{family}_{layout}'))
      ref.write_checkpoint(ref.to_layout(sd, hc, layout), hc, path)
      dirs[layout] = path
    out[family] = (hc, sd, dirs)
  return out


@pytest.mark.parametrize('family', ['llada2', 'llada_moe'])
def test_released_layouts_give_the_pytorch_reference_logits(checkpoints, family):
  hc, sd, dirs = checkpoints[family]
  cfg, params = moe_hf.load(dirs['experts'])
  assert type(cfg).family == family and cfg.hf_layout == 'experts'
  assert cfg.vocab_size == max(hc['vocab_size'], hc.get('embedding_size', 0))
  tokens = np.random.default_rng(0).integers(0, 256, (2, 12))
  got = jax.jit(lambda p, t: model.forward(p, t, config=cfg))(params, tokens)
  want = ref.torch_logits(sd, hc, torch.as_tensor(tokens)).numpy()
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)
  for layout in ('fused', 'w13'):  # The same parameters from the fused layouts.
    other_cfg, other = moe_hf.load(dirs[layout])
    assert other_cfg.hf_layout == layout
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('layout', ['experts', 'w13'])
def test_export_writes_back_the_same_tensors(checkpoints, tmp_path, layout):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  hc, sd, dirs = checkpoints['llada2']
  cfg, params = moe_hf.load(dirs[layout])
  moe_hf.save(params, cfg, str(tmp_path), dtype='float32')
  with open(tmp_path / hf.INDEX_FILE) as f:
    files = set(json.load(f)['weight_map'].values())
  written = {k: v for name in files for k, v in load_file(tmp_path / name).items()}
  want = ref.to_layout(sd, hc, layout)
  assert set(written) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(written[k], v.numpy(), err_msg=k)


def test_bad_checkpoints_give_one_line_errors(checkpoints, tmp_path):
  hc, sd, _ = checkpoints['llada2']
  with pytest.raises(ValueError, match=r"config.json hidden_size=32 does not match "
                     r"preset 'llada2_mini' \(d_model=2048\)"):
    moe_hf.config_from_hf(hc, 'llada2_mini')
  with pytest.raises(ValueError, match="llada2 checkpoint, preset 'llada_moe_7b'"):
    moe_hf.config_from_hf(hc, 'llada_moe_7b')
  missing = dict(sd)
  del missing['model.layers.2.mlp.experts.5.up_proj.weight']
  ref.write_checkpoint(missing, hc, str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match=r"tensor 'model.layers.2.mlp.experts.5."
                     r"up_proj.weight' is missing"):
    moe_hf.load(str(tmp_path / 'missing'))
  bad = dict(sd)
  bad['model.layers.1.mlp.experts.3.down_proj.weight'] = torch.zeros(32, 8)
  ref.write_checkpoint(bad, hc, str(tmp_path / 'shape'))
  with pytest.raises(ValueError, match=r'model.layers.1.mlp.experts.3.down_proj.weight: '
                     r'shape \(32, 8\) differs'):
    moe_hf.load(str(tmp_path / 'shape'))
  wide = dict(hc, num_experts=16)
  ref.write_checkpoint(sd, wide, str(tmp_path / 'experts'))
  with pytest.raises(ValueError, match=r"model.layers.1.mlp.gate.weight: shape \(32, 8\)"):
    moe_hf.load(str(tmp_path / 'experts'))
  cfg = models.get_preset('llada2_mini')
  with pytest.raises(ValueError, match=r'n_experts=256 is not divisible by the '
                     r'expert-parallel size mesh.expert=3'):
    models.of(cfg).check_mesh(cfg, {'expert': 3})


def test_special_ids_come_from_the_tokenizer_files(tmp_path):
  from tokenizers import Tokenizer, models as tok_models  # pylint: disable=g-import-not-at-top
  vocab = {t: i for i, t in enumerate(
      ['a', 'b', '<|startoftext|>', '<|endoftext|>', '<|mask|>', '<|role_end|>'])}
  Tokenizer(tok_models.WordLevel(vocab, unk_token='a')).save(str(tmp_path / 'tokenizer.json'))
  with open(tmp_path / 'tokenizer_config.json', 'w') as f:
    json.dump({'bos_token': '<|startoftext|>', 'eos_token': {'content': '<|endoftext|>'}}, f)
  ids = moe_hf.tokenizer(str(tmp_path)).special_ids
  assert (ids.mask, ids.bos, ids.eos, ids.eot, ids.pad) == (4, 2, 3, 5, 3)
  os.remove(tmp_path / 'tokenizer_config.json')
  with pytest.raises(FileNotFoundError, match='no tokenizer_config.json'):
    moe_hf.tokenizer(str(tmp_path))


def _one_step(cfg, objective, batch):
  opt, sched = opt_lib.make_optimizer(
      lr=1e-3, total_steps=10, warmup_steps=0, decay_fraction=0.0, final_lr_ratio=1.0,
      b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  state = jax.jit(lambda k: ts.init_train_state(cfg, opt, k))(jax.random.key(0))
  before = jax.tree.map(np.asarray, state.params)
  step = ts.make_train_step(cfg, opt, sched, objective=objective)
  state, metrics = step(state, batch, jax.random.key(1))
  return before, state, jax.device_get(metrics)


def test_train_step_balances_the_router_bias_outside_the_optimizer():
  cfg = models.get_preset('llada2_tiny', n_layers=2, max_len=64)
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(0, 256, (4, 16)).astype(np.int32),
           'prompt_lengths': np.full((4,), 5, np.int32)}
  before, state, metrics = _one_step(cfg, 'sft', batch)
  assert np.isfinite(metrics['loss']) and metrics['moe_dropped'] == 0
  assert metrics['moe_max_load'] >= 1.0 >= metrics['moe_min_load']
  old = before['layers'][1]['moe']['expert_bias']
  new = np.asarray(state.params['layers'][1]['moe']['expert_bias'])
  # Exactly +-rate (or 0): no gradient step, no weight decay on the bias.
  np.testing.assert_allclose(np.abs(new - old), cfg.bias_update_rate, rtol=1e-5)
  assert not np.allclose(np.asarray(state.params['layers'][1]['moe']['router']['kernel']),
                         before['layers'][1]['moe']['router']['kernel'])


def test_active_parameters_and_flops():
  mini = models.get_preset('llada2_mini')
  assert 1.3e9 < mini.num_active_params() < 1.5e9 < 16e9 < mini.num_params() < 16.5e9
  assert mini.forward_flops_per_token(0) < 2.2 * mini.num_active_params()
  flash = models.get_preset('llada2_flash')
  assert 6.0e9 < flash.num_active_params() < 6.3e9 and 1.0e11 < flash.num_params()


@pytest.mark.slow
def test_aux_loss_option():
  cfg = models.get_preset('llada_moe_tiny', n_layers=1, max_len=64)
  tokens = np.random.default_rng(1).integers(0, 256, (2, 16))
  spec = model.default_attention(cfg)
  params = jax.jit(lambda k: model.init_params(cfg, k))(jax.random.key(0))
  fwd = jax.jit(lambda p, c: models.of(c).forward_aux(p, tokens, spec, config=c)[1][
      'loss'], static_argnums=1)
  assert float(fwd(params, cfg)) == 0.0
  assert float(fwd(params, dataclasses.replace(cfg, aux_loss_coef=0.01))) > 0.0


@pytest.mark.parametrize('preset,caches', [
    ('llada2_tiny', [('dual', 'threshold')]),
    ('llada_moe_tiny', [('prefix', 'factor')]),
    pytest.param('llada2_tiny', [('none', 'fixed'), ('prefix', 'fixed'),
                                 ('none', 'factor')], marks=pytest.mark.slow),
    pytest.param('llada_moe_tiny', [('none', 'threshold'), ('dual', 'fixed')],
                 marks=pytest.mark.slow),
])
def test_every_sampler_and_cache_runs_on_both_families(preset, caches):
  cfg = models.get_preset(preset, n_layers=2 if preset == 'llada2_tiny' else 1,
                          max_len=64)
  params = jax.jit(lambda k: model.init_params(cfg, k))(jax.random.key(0))
  prompt = np.tile(np.arange(65, 71, dtype=np.int32), (2, 1))
  for cache, parallel in caches:
    sampling = dllm_jax.SamplingConfig(steps=4, gen_length=8, block_length=4,
                                       cache=cache, parallel=parallel)
    out = np.asarray(dllm_jax.generate(params, prompt, jax.random.key(0), config=cfg,
                                       sampling=sampling))
    assert out.shape == (2, 14) and not np.any(out == cfg.ids.mask), (cache, parallel)


@pytest.mark.slow
def test_cached_window_equals_the_full_forward():
  cfg = models.get_preset('llada2_tiny', n_layers=2, max_len=64)
  params = jax.jit(lambda k: model.init_params(cfg, k))(jax.random.key(0))
  tokens = np.random.default_rng(2).integers(0, 256, (1, 12))
  spec = model.default_attention(cfg)

  @jax.jit
  def both(p):
    full = moe_transformer.forward(p, tokens, spec, config=cfg)
    _, cache = moe_transformer.prefill(p, tokens, spec, config=cfg,
                                       output_window=(0, 12))
    return full, moe_transformer.window(p, tokens[:, 4:8], 4, cache, spec, config=cfg,
                                        output_length=4)[0]
  full, got = both(params)
  np.testing.assert_allclose(got, full[:, 4:8], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('preset', ['llada2_tiny', 'llada_moe_tiny'])
def test_trainer_pretrains_an_moe_preset_and_restores_it(tmp_path, preset):
  config = small_config(steps=2, log_every=1, checkpoint_every=2)
  config.model.preset = preset
  config.model.d_model = config.model.n_layers = config.model.n_heads = None
  config.model.d_ff = None
  config.sample.num_samples = 0
  state = trainer.train(config, str(tmp_path))
  cfg, params, _ = dllm_jax.restore_for_inference(str(tmp_path))
  assert type(cfg).family == models.get_preset(preset).family
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
