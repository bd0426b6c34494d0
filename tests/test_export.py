"""Exports load back: every registered family saves -> loads (Engine.from_hf_dir's
loader) -> identical logits; special ids from config.json; `launch.export` then
`launch.serve --hf_dir` answers over HTTP."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import models as model
from dllm_jax import tokenizers as tokenizer_lib
from dllm_jax.interop import export, hf_config, hf_dir, llada_hf, moe_hf, special_ids
from tests import support

# The tiny config of each built-in family; LLaDA-MoE with its optional paths.
TINY = {'llada': dict(preset='tiny', d_model=32, n_layers=1, n_heads=4, d_ff=48,
                      max_len=64),
        'llada_moe': dict(preset='llada_moe_tiny', d_model=32, head_dim=8, n_layers=3,
                          moe_layer_freq=(1, 0, 1), shared_d_ff=16, expert_bias=True),
        'llada2': dict(preset='llada2_tiny', d_model=32, n_layers=2)}
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 12))


def _random_params(cfg, seed=0):
  """Init parameters with every leaf perturbed (norms and biases included)."""
  params = support.jit_init_params(cfg, seed)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [
      x + (0.05 * jax.random.normal(k, x.shape)).astype(x.dtype)
      for x, k in zip(leaves, keys)])


_FORWARD = jax.jit(model.forward, static_argnames='config')


def _logits(params, cfg):
  return np.asarray(_FORWARD(params, TOKENS, config=cfg))


@pytest.mark.parametrize('family', models.names())
def test_every_family_exports_and_loads_back_with_identical_logits(family, tmp_path):
  if family not in TINY:  # A family with no released layout (tests' toy): refused.
    cfg = models.get_preset(next(iter(models.get(family).presets)))
    with pytest.raises(ValueError, match='has no Hugging Face config.json layout'):
      export.write({}, cfg, str(tmp_path))
    return
  opts = dict(TINY[family])
  cfg = models.get_preset(opts.pop('preset'), **opts)
  params = _random_params(cfg)
  export.write(params, cfg, str(tmp_path), sample={'steps': 8, 'gen_length': 8})
  loaded = hf_dir.load(str(tmp_path))
  assert type(loaded.config) is type(cfg) and loaded.config.ids == cfg.ids
  assert loaded.tokenizer.name == 'byte' and loaded.generation['steps'] == 8
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
    assert a.dtype == b.dtype  # The params' own dtype (float32), not bfloat16.
  np.testing.assert_array_equal(_logits(loaded.params, loaded.config), _logits(params, cfg))
  with open(tmp_path / 'config.json') as f:
    written = json.load(f)
  assert written['mask_token_id'] == cfg.ids.mask
  if family == 'llada_moe':  # The reference config's key names.
    assert written['moe_layer_freq'] == [1, 0, 1]
    assert written['moe_router_enable_expert_bias'] is True
    assert written['shared_expert_intermediate_size'] == 16


@pytest.mark.parametrize('family', sorted(TINY))
def test_exports_load_in_the_released_modeling_code(family, tmp_path):
  """Optional: DLLM_REFERENCE_DIR=<ZHZisZZ/dllm checkout> with transformers:
  the released code's from_pretrained reads the export, same logits."""
  from tests import released_code  # pylint: disable=g-import-not-at-top
  released_code.classes(family, tmp_path / 'code')  # Skips when unavailable.
  opts = dict(TINY[family])
  cfg = models.get_preset(opts.pop('preset'), **opts)
  params = _random_params(cfg)
  export.write(params, cfg, str(tmp_path / 'hf'))
  want = released_code.logits(family, str(tmp_path / 'hf'), TOKENS, tmp_path / 'ref')
  np.testing.assert_allclose(_logits(params, cfg), want, rtol=1e-5, atol=1e-5)


def test_bfloat16_export_on_request_and_unexpressible_configs_refused(tmp_path):
  cfg = models.get_preset('llada2_tiny', d_model=32, n_layers=2)
  params = _random_params(cfg)
  export.write(params, cfg, str(tmp_path), dtype='bfloat16')
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  files = [f for f in os.listdir(tmp_path) if f.endswith('.safetensors')]
  tensors = {k: v for f in files for k, v in load_file(tmp_path / f).items()}
  assert tensors['model.layers.1.mlp.gate.weight'].dtype == np.float32  # Router.
  assert tensors['model.layers.0.attention.dense.weight'].dtype.name == 'bfloat16'
  with pytest.raises(ValueError, match="cannot express router='softmax'"):
    hf_config.to_hf(models.get_preset('llada2_tiny', router='softmax'))
  with pytest.raises(ValueError, match="cannot express causal=True"):
    hf_config.to_hf(models.get_preset('tiny', causal=True))


def test_special_ids_come_from_config_json_and_clashes_are_refused():
  hc = {'model_type': 'llada', 'd_model': 32, 'n_layers': 1, 'n_heads': 2,
        'mlp_hidden_size': 64, 'max_sequence_length': 64, 'vocab_size': 300,
        'mask_token_id': 290, 'bos_token_id': 1, 'eos_token_id': [2, 3],
        'pad_token_id': 4}
  ids = llada_hf.config_from_hf(hc).ids
  assert (ids.mask, ids.bos, ids.eos, ids.eot, ids.pad) == (290, 1, 2, 2, 4)
  with pytest.raises(ValueError, match='eos id 290 is also the mask id'):
    llada_hf.config_from_hf({**hc, 'eos_token_id': 290})
  with pytest.raises(ValueError, match='names no mask_token_id and the directory has '
                     'no tokenizer files'):
    llada_hf.config_from_hf({k: v for k, v in hc.items() if k != 'mask_token_id'})
  # LLaDA-sized vocabulary: the documented ids fill the unnamed roles.
  llada = models.get_preset('llada_8b')
  assert llada_hf.config_from_hf({**hc, 'vocab_size': 126_464, 'mask_token_id': None,
                                  'eos_token_id': None, 'pad_token_id': None,
                                  'bos_token_id': None}).ids == llada.ids
  with pytest.raises(ValueError, match=r'config.json eos_token_id=7 but the tokenizer '
                     r'files give eos id 258'):
    special_ids.check_agrees({'eos_token_id': 7}, tokenizer_lib.BYTE_IDS, 'DIR')
  moe = moe_hf.config_from_hf({'model_type': 'lladamoe', 'num_experts': 8,
                               'vocab_size': 264, 'hidden_size': 32,
                               'num_hidden_layers': 1, 'num_attention_heads': 4,
                               'mask_token_id': 260, 'bos_token_id': 257,
                               'eos_token_id': 258, 'pad_token_id': 256,
                               'eot_token_id': 259})
  assert moe.ids == tokenizer_lib.BYTE_IDS


def test_launch_export_then_serve_hf_dir(random_workdir, tmp_path):
  out = str(tmp_path / 'hf')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  r = subprocess.run([sys.executable, '-m', 'launch.export', f'--workdir={random_workdir}',
                      f'--out={out}'], cwd=support.REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0 and 'wrote' in r.stdout, r.stderr[-2000:]
  (tmp_path / 'a_file').write_text('')  # --out names a file: one line, no traceback.
  bad = subprocess.run([sys.executable, '-m', 'launch.export', f'--workdir={random_workdir}',
                        f'--out={tmp_path / "a_file"}/hf'], cwd=support.REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and 'Traceback' not in bad.stderr, bad.stderr[-2000:]
  assert bad.stderr.strip().splitlines()[-1].startswith('error: cannot write the export')
  with open(os.path.join(out, 'generation_config.json')) as f:
    assert json.load(f)['gen_length'] == 8
  proc, url = support.start_server([f'--hf_dir={out}', '--max_batch=1', '--warmup=',
                                    '--prompt_buckets=16', '--max_tokens=8'])
  try:
    reply = httpx.post(url + '/v1/completions', json={'prompt': 'hi', 'max_tokens': 4,
                                                      'steps': 4, 'seed': 1}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()['choices'][0]['finish_reason'] in ('stop', 'length')
  finally:
    proc.kill()
    proc.wait()


def _word_tokenizer(path, specials):
  """A word-level tokenizer.json with the given special tokens at ids 4, 5, ..."""
  from tokenizers import Tokenizer, models as tok_models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  words = ['hello', 'world', 'cat', '<unk>'] + specials
  tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)},
                                       unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, 'tokenizer.json'))


@pytest.mark.parametrize('family', ['llada', 'llada2'])
def test_export_carries_the_tokenizer_files_and_special_tokens(family, tmp_path):
  from dllm_jax.tokenizers.hf import HFTokenizer  # pylint: disable=g-import-not-at-top
  specials = ['<s>', '</s>', '<m>', '<eot>']
  _word_tokenizer(str(tmp_path / 'tok'), specials)
  tok = HFTokenizer(str(tmp_path / 'tok'), {'bos': '<s>', 'eos': '</s>', 'pad': '</s>',
                                            'mask': '<m>', 'eot': '<eot>'})
  opts = dict(TINY[family], vocab_size=16, ids=tok.special_ids)
  cfg = models.get_preset(opts.pop('preset'), **opts)
  params = _random_params(cfg)
  export.write(params, cfg, str(tmp_path / 'hf'), tokenizer=tok)
  loaded = hf_dir.load(str(tmp_path / 'hf'))
  assert loaded.tokenizer.name == 'hf' and loaded.tokenizer.special_ids == tok.special_ids
  assert loaded.config.ids == tok.special_ids
  np.testing.assert_array_equal(loaded.tokenizer.encode('hello cat', add_bos=True),
                                tok.encode('hello cat', add_bos=True))
  with pytest.raises(ValueError, match='hf exists and is not empty'):
    export.write(params, cfg, str(tmp_path / 'hf'))
  export.write(params, cfg, str(tmp_path / 'no_tok'))  # Its ids are not the byte ones.
  with pytest.raises(ValueError, match='has no tokenizer files .* not the byte'):
    hf_dir.load(str(tmp_path / 'no_tok'))
  with pytest.raises(ValueError, match="special ids .* are not the model config's"):
    export.write(params, dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, eot=0)),
                 str(tmp_path / 'bad'), tokenizer=tok)


def test_block_diffusion_export_keeps_its_sampler_and_likelihood(random_block_workdir,
                                                                 tmp_path):
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling.block import BlockSamplingConfig  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import Engine  # pylint: disable=g-import-not-at-top
  cfg, params, tok = checkpoint.restore_for_inference(random_block_workdir)
  export.write(params, cfg, str(tmp_path), tokenizer=tok,
               sample=export.sample_settings(checkpoint.read_meta(random_block_workdir)))
  engine = Engine.from_hf_dir(str(tmp_path))
  assert engine.trained_block_size == 8
  assert isinstance(engine.default_sampling, BlockSamplingConfig)
  assert engine.default_sampling.block_length == 8


def test_export_carries_a_sentencepiece_model(tmp_path):
  from dllm_jax.tokenizers import sp as sp_tokenizer  # pylint: disable=g-import-not-at-top
  texts = ['hello world, the cat sat on the mat.\n', 'def f(x):\n  return x + 1\n'] * 20
  tok = tokenizer_lib.make_tokenizer('sentencepiece:' + sp_tokenizer.train(
      texts, str(tmp_path / 'sp'), vocab_size=300, hard_vocab_limit=False))
  opts = dict(TINY['llada'], vocab_size=tok.vocab_size, ids=tok.special_ids)
  cfg = models.get_preset(opts.pop('preset'), **opts)
  export.write(support.jit_init_params(cfg), cfg, str(tmp_path / 'hf'), tokenizer=tok)
  loaded = hf_dir.load(str(tmp_path / 'hf'))
  assert loaded.tokenizer.name == 'sentencepiece'
  assert loaded.tokenizer.special_ids == tok.special_ids == loaded.config.ids
  np.testing.assert_array_equal(loaded.tokenizer.encode('the cat', add_bos=True),
                                tok.encode('the cat', add_bos=True))


def test_a_released_llada2_directory_is_scored_with_the_block_nelbo(tmp_path):
  """No generation keys of this project's (a released LLaDA2 directory): the
  likelihood is the block NELBO at LLaDA2's training block size; a dense
  LLaDA directory keeps the bidirectional ELBO."""
  from dllm_jax.serving import loading  # pylint: disable=g-import-not-at-top
  for family in ('llada2', 'llada'):
    opts = dict(TINY[family])
    cfg = models.get_preset(opts.pop('preset'), **opts)
    export.write(support.jit_init_params(cfg), cfg, str(tmp_path / family))
    loaded = loading.from_hf_dir(str(tmp_path / family))
    want = loading.LLADA2_BLOCK_SIZE if family == 'llada2' else None
    assert loaded.trained_block_size == want, family
