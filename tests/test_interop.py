"""LLaDA Hugging Face weights: dllm_jax logits equal an independent PyTorch
implementation of the LLaDA architecture on a random checkpoint in that layout."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models as presets
from dllm_jax.interop import llada_hf
from tests import support

torch = pytest.importorskip('torch')
F = torch.nn.functional

CFG = presets.get_preset('tiny', d_model=32, n_layers=2, n_heads=4, d_ff=48,
                         max_len=64)


def random_llada_state_dict(cfg, seed=0):
  g = torch.Generator().manual_seed(seed)
  rand = lambda *shape: 0.1 * torch.randn(*shape, generator=g)
  d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
  sd = {'model.transformer.wte.weight': rand(v, d),
        'model.transformer.ln_f.weight': 1 + rand(d),
        'model.transformer.ff_out.weight': rand(v, d)}
  for n in range(cfg.n_layers):
    b = f'model.transformer.blocks.{n}.'
    for name, shape in [('q_proj', (d, d)), ('k_proj', (d, d)), ('v_proj', (d, d)),
                        ('attn_out', (d, d)), ('ff_proj', (f, d)), ('up_proj', (f, d)),
                        ('ff_out', (d, f))]:
      sd[b + name + '.weight'] = rand(*shape)
    sd[b + 'attn_norm.weight'] = 1 + rand(d)
    sd[b + 'ff_norm.weight'] = 1 + rand(d)
  return sd


def torch_llada_logits(sd, cfg, tokens):
  """The LLaDA mask predictor, written from the architecture description:
  pre-norm RMSNorm, rotary embeddings (rotate-half), bidirectional attention,
  SwiGLU `ff_out(silu(ff_proj(x)) * up_proj(x))`, no biases, untied head."""
  x = sd['model.transformer.wte.weight'][tokens]
  b, l, d = x.shape
  h_n, hd = cfg.n_heads, d // cfg.n_heads
  inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
  freqs = torch.outer(torch.arange(l).float(), inv_freq)
  emb = torch.cat([freqs, freqs], dim=-1)
  cos, sin = emb.cos(), emb.sin()

  def rotate(t):
    t1, t2 = t.chunk(2, dim=-1)
    return t * cos + torch.cat([-t2, t1], dim=-1) * sin

  def rms(t, w):
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

  for n in range(cfg.n_layers):
    p = lambda k: sd[f'model.transformer.blocks.{n}.{k}.weight']
    h = rms(x, p('attn_norm'))
    heads = lambda t: t.view(b, l, h_n, hd).transpose(1, 2)
    q, k, v = heads(h @ p('q_proj').T), heads(h @ p('k_proj').T), heads(h @ p('v_proj').T)
    att = torch.softmax(rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(hd), -1)
    x = x + (att @ v).transpose(1, 2).reshape(b, l, d) @ p('attn_out').T
    h = rms(x, p('ff_norm'))
    x = x + (F.silu(h @ p('ff_proj').T) * (h @ p('up_proj').T)) @ p('ff_out').T
  x = rms(x, sd['model.transformer.ln_f.weight'])
  return x @ sd['model.transformer.ff_out.weight'].T


def write_sharded(sd, path, dtype=torch.float32):
  """Two safetensors shards plus the index JSON, as Hugging Face writes them."""
  from safetensors.torch import save_file
  os.makedirs(path, exist_ok=True)
  names = sorted(sd)
  halves = [names[:len(names) // 2], names[len(names) // 2:]]
  weight_map = {}
  for i, part in enumerate(halves):
    fname = f'model-{i + 1:05d}-of-00002.safetensors'
    save_file({k: sd[k].to(dtype).contiguous() for k in part}, os.path.join(path, fname))
    weight_map.update({k: fname for k in part})
  with open(os.path.join(path, llada_hf.INDEX_FILE), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)


def test_imported_llada_weights_give_the_pytorch_logits(tmp_path):
  sd = random_llada_state_dict(CFG)
  write_sharded(sd, tmp_path)
  params = llada_hf.load_params(str(tmp_path), CFG)
  tokens = np.random.default_rng(0).integers(0, 256, (2, 12))
  got = np.asarray(support.jit_forward(params, jnp.asarray(tokens), config=CFG))
  with torch.no_grad():
    want = torch_llada_logits(sd, CFG, torch.as_tensor(tokens)).numpy()
  # float32 on both sides; differences are summation order only.
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_bf16_checkpoint_loads_as_bf16_and_stays_close(tmp_path):
  sd = random_llada_state_dict(CFG, seed=1)
  write_sharded(sd, tmp_path, dtype=torch.bfloat16)
  cfg = presets.get_preset('tiny', d_model=32, n_layers=2, n_heads=4, d_ff=48,
                           max_len=64, param_dtype='bfloat16', dtype='bfloat16')
  params = llada_hf.load_params(str(tmp_path), cfg)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  tokens = np.arange(10)[None]
  got = np.asarray(support.jit_forward(params, jnp.asarray(tokens), config=cfg),
                   np.float32)
  with torch.no_grad():
    sd32 = {k: v.to(torch.bfloat16).float() for k, v in sd.items()}
    want = torch_llada_logits(sd32, CFG, torch.as_tensor(tokens)).numpy()
  # bf16 activations: about 3 significant digits.
  np.testing.assert_allclose(got, want, atol=0.05)


def test_save_then_load_round_trips(tmp_path):
  params = support.jit_init_params(CFG)
  llada_hf.save_params(params, CFG, str(tmp_path), max_shard_bytes=40_000,
                       dtype='float32')
  with open(tmp_path / llada_hf.INDEX_FILE) as f:
    index = json.load(f)
  assert len(set(index['weight_map'].values())) > 1  # Really sharded.
  assert set(index['weight_map']) == {n for n, _, _ in llada_hf.name_map(CFG)}
  again = llada_hf.load_params(str(tmp_path), CFG)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_wrong_shapes_or_missing_tensors_are_clear_errors(tmp_path):
  sd = random_llada_state_dict(CFG)
  write_sharded(sd, tmp_path)
  with pytest.raises(ValueError, match="tensor 'model.transformer.blocks.2.q_proj.weight' is missing"):
    llada_hf.load_params(str(tmp_path), presets.get_preset(
        'tiny', d_model=32, n_layers=3, n_heads=4, d_ff=48, max_len=64))
  with pytest.raises(ValueError, match='does not match'):
    llada_hf.load_params(str(tmp_path), presets.get_preset(
        'tiny', d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64))
  with pytest.raises(FileNotFoundError, match='no model.safetensors.index.json'):
    llada_hf.load_params(str(tmp_path / 'nothing'), CFG)


# --- tokenizer.json ----------------------------------------------------------------

LLADA_TEMPLATE = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def _write_llada_like_tokenizer(path):
  """A small word-level tokenizer.json with LLaDA's special tokens at LLaDA's ids."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = ['hello', 'world', 'the', 'cat', '<unk>']
  vocab = {w: i for i, w in enumerate(words)}
  specials = {'<|startoftext|>': 126080, '<|endoftext|>': 126081,
              '<|mdm_mask|>': 126336, '<|eot_id|>': 126348,
              '<|start_header_id|>': 126346, '<|end_header_id|>': 126347}
  vocab.update(specials)
  tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(list(specials))
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, 'tokenizer.json'))
  with open(os.path.join(path, 'tokenizer_config.json'), 'w') as f:
    json.dump({'chat_template': LLADA_TEMPLATE}, f)


def test_hf_tokenizer_json_has_llada_special_ids_and_chat_template(tmp_path):
  from dllm_jax import tokenizers as tokenizer_lib
  from dllm_jax.tokenizers.hf import HFTokenizer
  _write_llada_like_tokenizer(tmp_path)
  tok = HFTokenizer(str(tmp_path))
  llada = presets.get_preset('llada_8b')
  assert (tok.mask_id, tok.bos_id, tok.eos_id, tok.eot_id) == (
      llada.mask_id, llada.bos_id, llada.eos_id, llada.eot_id)
  ids = tok.encode('hello the cat', add_bos=True, add_eos=True)
  assert ids[0] == llada.bos_id and ids[-1] == llada.eos_id
  assert tok.decode(ids) == 'hello the cat'
  chat = tok.apply_chat_template([{'role': 'user', 'content': 'hello world'}])
  assert chat == ('<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhello world'
                  '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n')
  assert tokenizer_lib.from_dict(json.loads(json.dumps(tok.to_dict()))).mask_id == tok.mask_id


def test_hf_tokenizer_without_mask_token_is_a_clear_error(tmp_path):
  from tokenizers import Tokenizer, models
  from dllm_jax.tokenizers.hf import HFTokenizer
  Tokenizer(models.WordLevel({'a': 0, '<unk>': 1}, unk_token='<unk>')).save(
      str(tmp_path / 'tokenizer.json'))
  with pytest.raises(ValueError, match="no mask token '<\\|mdm_mask\\|>'"):
    HFTokenizer(str(tmp_path))


def test_chat_template_cannot_reach_python(tmp_path):
  """The template is rendered in Jinja's sandbox: no attribute escapes."""
  from dllm_jax.tokenizers.hf import HFTokenizer
  _write_llada_like_tokenizer(tmp_path)
  tok = HFTokenizer(str(tmp_path))
  tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
  with pytest.raises(Exception, match='unsafe|access'):
    tok.apply_chat_template([{'role': 'user', 'content': 'x'}])


MESH_SCRIPT = r'''
import sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.interop import llada_hf
cfg = presets.get_preset('tiny', d_model=32, n_layers=2, n_heads=4, d_ff=48, max_len=64)
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
def sharding_for(path, shape):  # Columns over 'model' where they divide.
  if len(shape) == 2 and shape[1] % 4 == 0:
    return NamedSharding(mesh, P(None, 'model'))
  return NamedSharding(mesh, P())
params = llada_hf.load_params(sys.argv[1], cfg, sharding_for=sharding_for)
q = params['blocks'][0]['q_proj']['kernel']
assert q.sharding.spec == P(None, 'model'), q.sharding
assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (32, 8)
tokens = np.arange(12)[None] % 256
forward = jax.jit(model.forward, static_argnames='config')  # Eagerly: a compile per op.
sharded = np.asarray(forward(params, tokens, config=cfg))
local = jax.tree.map(lambda x: jax.device_put(x, jax.devices()[0]), params)
np.testing.assert_allclose(sharded, np.asarray(forward(local, tokens, config=cfg)),
                           atol=1e-5)
print('ok', len(jax.devices()))
'''


def test_load_places_each_tensor_on_a_mesh_as_it_loads(tmp_path):
  import subprocess
  import sys
  from tests.support import REPO
  write_sharded(random_llada_state_dict(CFG), tmp_path)
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  r = subprocess.run([sys.executable, '-c', MESH_SCRIPT, str(tmp_path)], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and 'ok 8' in r.stdout, r.stderr[-3000:]
