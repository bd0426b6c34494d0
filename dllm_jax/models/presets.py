"""Named model shapes, across every family (`models/`), and the tokenizer fit.

A preset fixes a family's shape and the special token ids that go with its
tokenizer. The `llada` family's: `tiny` and `small` use the byte-level
tokenizer (`tokenizers/base.py`); `llada_1b` and `llada_8b` the LLaDA vocabulary
and ids. `ModelConfig` is the `llada` family's config (kept here for the code
that predates families).
"""

from __future__ import annotations

from typing import Any

from dllm_jax import ids as ids_lib
from dllm_jax.models import registry
from dllm_jax.models.llada import BYTE_VOCAB, DTYPES, EMBED_GRADS, REMAT_POLICIES
from dllm_jax.models.llada import ModelConfig

__all__ = ['BYTE_VOCAB', 'DTYPES', 'EMBED_GRADS', 'REMAT_POLICIES', 'ModelConfig',
           'PRESETS', 'tokenizer_overrides']


class _LazyPresets:
  """`PRESETS[name]`: the fields of any family's preset (read at lookup time, so
  families registered later are included)."""

  def __getitem__(self, name: str):
    return registry.preset_family(name).presets[name]

  def __contains__(self, name: object) -> bool:
    return name in registry.preset_names()

  def __iter__(self):
    return iter(registry.preset_names())

  def keys(self):
    return registry.preset_names()

  def __len__(self) -> int:
    return len(registry.preset_names())


PRESETS = _LazyPresets()



def tokenizer_overrides(preset: str, tokenizer) -> dict[str, Any]:
  """Fields a preset takes from a tokenizer: a byte-vocabulary preset (tiny,
  small) used with another tokenizer adopts its special ids and its vocabulary
  size rounded up to a multiple of 128; otherwise nothing (the preset's ids must
  then match, which the trainer checks)."""
  if (tokenizer is None or tokenizer.name == 'byte' or
      PRESETS[preset].get('vocab_size') != BYTE_VOCAB):
    return {}
  return {'vocab_size': -(-tokenizer.vocab_size // 128) * 128,
          'ids': ids_lib.SpecialIds.of(tokenizer)}
