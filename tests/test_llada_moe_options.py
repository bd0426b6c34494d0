"""LLaDA-MoE's optional paths (`moe_layer_freq` dense layers, the shared expert
at the decoder layer, the router bias kept in the weights): import, forward and
export against the PyTorch transcription of `modeling_lladamoe.py`
(tests/moe_reference.py), and against the released modeling code itself where
`transformers` imports and DLLM_REFERENCE_DIR names a ZHZisZZ/dllm checkout."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import models as model
from dllm_jax.interop import hf, moe_hf
from dllm_jax.models import moe

torch = pytest.importorskip('torch')
from tests import moe_reference as ref  # pylint: disable=g-import-not-at-top
from tests import released_code  # pylint: disable=g-import-not-at-top

HC = ref.LLADA_MOE_OPTIONS
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 12))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  sd = ref.random_state_dict(HC, seed=3)
  path = str(tmp_path_factory.mktemp('llada_moe_options'))
  ref.write_checkpoint(sd, HC, path)
  cfg, params = moe_hf.load(path)
  logits = np.asarray(jax.jit(lambda p, t: model.forward(p, t, config=cfg))(params, TOKENS))
  return sd, path, cfg, params, logits


def test_softmax_bias_chooses_and_stays_in_the_weights():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
  bias = jnp.array([0.0, 0.0, 0.4])
  idx, w, _ = moe.route(logits, router='softmax', top_k=1, bias=bias)
  assert int(idx[0, 0]) == 2 and np.isclose(float(w[0, 0]), 0.6)  # 0.2 + 0.4.
  idx, w, _ = moe.route(logits, router='sigmoid', top_k=1, bias=bias)
  # LLaDA2's bias only selects: the weight is the unbiased sigmoid score.
  assert int(idx[0, 0]) == 2 and np.isclose(float(w[0, 0]), float(jax.nn.sigmoid(logits[0, 2])))


def test_softmax_bias_routing_equals_a_numpy_transcription():
  """LLaDAMoESparseMoeBlock.forward's routing in NumPy: p = softmax(logits) +
  expert_bias; top-k of p; the weights are those p (no renormalisation)."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(32, 8)).astype(np.float32)
  bias = (0.1 * rng.normal(size=8)).astype(np.float32)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  p = e / e.sum(-1, keepdims=True) + bias
  want_idx = np.argsort(-p, -1, kind='stable')[:, :2]
  idx, w, _ = moe.route(jnp.asarray(logits), router='softmax', top_k=2,
                        bias=jnp.asarray(bias))
  np.testing.assert_array_equal(np.asarray(idx), want_idx)
  np.testing.assert_allclose(np.asarray(w), np.take_along_axis(p, want_idx, -1),
                             rtol=1e-6)


def test_options_import_with_the_reference_config_keys(checkpoint):
  _, _, cfg, params, _ = checkpoint
  assert type(cfg).family == 'llada_moe'
  assert cfg.moe_layers == (0, 2) and cfg.moe_layer_freq == (1, 0, 1)
  assert (cfg.d_ff, cfg.moe_d_ff, cfg.shared_d_ff, cfg.expert_bias) == (24, 16, 12, True)
  # No tokenizer files: the special ids are config.json's.
  assert (cfg.ids.mask, cfg.ids.bos, cfg.ids.eos, cfg.ids.pad) == (260, 257, 258, 256)
  assert set(params['layers'][1]) >= {'mlp'} and 'moe' not in params['layers'][1]
  assert set(params['layers'][0]['moe']) == {'router', 'experts', 'expert_bias', 'shared'}
  # A moe_layer_freq of the wrong length is a one-line error.
  with pytest.raises(ValueError, match='moe_layer_freq has 2 entries; need one per layer'):
    moe_hf.config_from_hf({**HC, 'moe_layer_freq': [1, 0]})


def test_options_forward_gives_the_reference_logits(checkpoint):
  sd, _, _, _, got = checkpoint
  want = ref.torch_logits(sd, HC, torch.as_tensor(TOKENS)).numpy()
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  # The bias matters: without it the logits differ.
  no_bias = {k: v for k, v in sd.items() if not k.endswith('expert_bias')}
  other = ref.torch_logits(no_bias, HC, torch.as_tensor(TOKENS)).numpy()
  assert np.max(np.abs(other - want)) > 1e-3


def test_options_export_writes_back_the_reference_tensors(checkpoint, tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  sd, _, cfg, params, _ = checkpoint
  moe_hf.save(params, cfg, str(tmp_path), dtype='float32')
  with open(tmp_path / hf.INDEX_FILE) as f:
    files = set(json.load(f)['weight_map'].values())
  written = {k: v for name in files for k, v in load_file(tmp_path / name).items()}
  assert set(written) == set(sd)
  assert 'model.layers.0.shared_expert.up_proj.weight' in written
  for k, v in sd.items():
    np.testing.assert_array_equal(written[k], v.numpy(), err_msg=k)


def test_options_match_the_released_modeling_code(checkpoint, tmp_path):
  """Optional: DLLM_REFERENCE_DIR=<ZHZisZZ/dllm checkout> with transformers."""
  sd, _, _, _, got = checkpoint
  model_cls, config_cls = released_code.classes('llada_moe', tmp_path)
  config = config_cls(**{k: v for k, v in HC.items() if k != 'model_type'})
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  net = model_cls(config).eval()
  net.load_state_dict(sd, strict=True)
  with torch.no_grad():
    want = net(input_ids=torch.as_tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
