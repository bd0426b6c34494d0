"""The families' released modeling code (ZHZisZZ/dllm's vendored copies), for the
optional checks against it: DLLM_REFERENCE_DIR names a checkout of that
repository and `transformers` (4.57, as it pins) must import; otherwise the
tests that use it skip. Nothing here is needed at run time."""

from __future__ import annotations

import importlib
import os
import sys

import pytest

# family -> (directory, modeling module, config module, model class, config class)
FILES = {
    'llada': ('llada', 'modeling_llada', 'configuration_llada', 'LLaDAModelLM',
              'LLaDAConfig'),
    'llada_moe': ('llada', 'modeling_lladamoe', 'configuration_lladamoe',
                  'LLaDAMoEModelLM', 'LLaDAMoEConfig'),
    'llada2': ('llada2', 'modeling_llada2_moe', 'configuration_llada2_moe',
               'LLaDA2MoeModelLM', 'LLaDA2MoeConfig'),
}


def classes(family: str, tmp_path):
  """(model class, config class) of a family's released code, its two files
  copied into a package of their own under tmp_path; skips when unavailable."""
  root = os.environ.get('DLLM_REFERENCE_DIR')
  if not root:
    pytest.skip('DLLM_REFERENCE_DIR (a ZHZisZZ/dllm checkout) is not set.')
  pytest.importorskip('transformers')
  folder, modeling, configuration, model_cls, config_cls = FILES[family]
  pkg = tmp_path / f'released_{family}'
  pkg.mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  for name in (modeling, configuration):
    with open(os.path.join(root, 'dllm/pipelines', folder, 'models', name + '.py')) as f:
      text = f.read()
    # LLaDAModelLM builds its layers on "cuda" unconditionally: CPU here.
    text = text.replace('model_config.init_device = "cuda"',
                        'model_config.init_device = "cpu"')
    (pkg / f'{name}.py').write_text(text)
  sys.path.insert(0, str(tmp_path))
  try:
    mod = importlib.import_module(f'{pkg.name}.{modeling}')
    conf = importlib.import_module(f'{pkg.name}.{configuration}')
  finally:
    sys.path.remove(str(tmp_path))
  return getattr(mod, model_cls), getattr(conf, config_cls)


def logits(family: str, path: str, tokens, tmp_path):
  """Logits [B, L, V] (numpy) of the released code's `from_pretrained(path)`,
  attending everywhere (LLaDA2's eager path would build a causal mask when
  given none: it gets a 4-D mask of ones)."""
  import torch  # pylint: disable=g-import-not-at-top
  model_cls, config_cls = classes(family, tmp_path)
  config = config_cls.from_pretrained(path)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  net = model_cls.from_pretrained(path, config=config, dtype=torch.float32).eval()
  b, l = tokens.shape
  kw = {'attention_mask': torch.ones(b, 1, l, l)} if family == 'llada2' else {}
  with torch.no_grad():
    return net(input_ids=torch.as_tensor(tokens), **kw).logits.float().numpy()
