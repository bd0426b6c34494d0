"""Model shapes: `ModelConfig` and the named presets.

A preset fixes the Transformer shape and the special token ids that go with its
tokenizer. `tiny` and `small` use the byte-level tokenizer (`data/tokenizer.py`);
`llada_1b` and `llada_8b` use the LLaDA vocabulary and ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dllm_jax.data import tokenizer as tokenizer_lib

DTYPES = ('float32', 'bfloat16')
ATTENTION_IMPLS = (None, 'xla', 'cudnn')
REMAT_POLICIES = ('none', 'full', 'dots')
EMBED_GRADS = ('scatter', 'onehot')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of the mask predictor (hashable: used as a static jit arg)."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  d_ff: int
  max_len: int
  rope_theta: float = 500_000.0
  norm_eps: float = 1e-5
  init_std: float = 0.02
  causal: bool = False  # True: the autoregressive twin.
  dtype: str = 'float32'  # Compute dtype; parameters are always `param_dtype`.
  param_dtype: str = 'float32'
  attention_impl: str | None = None  # None: cuDNN on GPU with bf16, else XLA.
  # Training memory/compile options (the function computed is the same):
  # rematerialise each block in the backward pass: none | full | dots (keep the
  # matmul outputs, recompute the rest); scan over layers: compile time flat in
  # depth (the blocks' weights are stacked inside the step).
  remat: str = 'none'
  scan_layers: bool = False
  # The input embedding's gradient: 'scatter' (XLA's scatter-add of the rows) or
  # 'onehot' (a one-hot [N, V] x [N, D] product: no scatter, 2 N V D FLOPs).
  embed_grad: str = 'scatter'
  # Special token ids of the tokenizer this shape is meant for.
  mask_id: int = tokenizer_lib.BYTE_MASK_ID
  bos_id: int = tokenizer_lib.BYTE_BOS_ID
  eos_id: int = tokenizer_lib.BYTE_EOS_ID
  eot_id: int = tokenizer_lib.BYTE_EOT_ID
  pad_id: int = tokenizer_lib.BYTE_PAD_ID

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(
          f'd_model={self.d_model} is not divisible by n_heads={self.n_heads}.')
    if (self.d_model // self.n_heads) % 2:
      raise ValueError(
          f'head dim {self.d_model // self.n_heads} must be even for RoPE.')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in DTYPES:
        raise ValueError(
            f'{name}={getattr(self, name)!r} is not one of {DTYPES}.')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'remat={self.remat!r} is not one of {REMAT_POLICIES}.')
    if self.embed_grad not in EMBED_GRADS:
      raise ValueError(f'embed_grad={self.embed_grad!r} is not one of {EMBED_GRADS}.')
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f'attention_impl={self.attention_impl!r} is not one of '
                       f'{ATTENTION_IMPLS}.')
    for name in ('mask_id', 'bos_id', 'eos_id', 'eot_id', 'pad_id'):
      if not 0 <= getattr(self, name) < self.vocab_size:
        raise ValueError(f'{name}={getattr(self, name)} is outside the '
                         f'vocabulary [0, {self.vocab_size}).')

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def num_params(self) -> int:
    """Parameter count (embedding and output head included)."""
    per_layer = 4 * self.d_model**2 + 3 * self.d_model * self.d_ff + 2 * self.d_model
    return (self.n_layers * per_layer + 2 * self.vocab_size * self.d_model +
            self.d_model)


BYTE_VOCAB = 264  # 261 byte-tokenizer ids, padded to a multiple of 8.

_LLADA_IDS = dict(
    vocab_size=126_464, mask_id=126_336, bos_id=126_080, eos_id=126_081,
    eot_id=126_348, pad_id=126_081)  # LLaDA pads SFT answers with EOS.

PRESETS: dict[str, dict[str, Any]] = {
    # Trains on 2 CPU cores in minutes.
    # (At a fixed CPU budget two layers beat four: twice the tokens per second.)
    'tiny': dict(vocab_size=BYTE_VOCAB, d_model=128, n_layers=2, n_heads=4,
                 d_ff=384, max_len=512),
    # ~25M parameters: a step up for a single accelerator.
    'small': dict(vocab_size=BYTE_VOCAB, d_model=512, n_layers=8, n_heads=8,
                  d_ff=1536, max_len=1024),
    # ~1.5B parameters with the LLaDA vocabulary (MFU benchmarks, scaling).
    'llada_1b': dict(d_model=2048, n_layers=22, n_heads=16, d_ff=5632,
                     max_len=4096, **_LLADA_IDS),
    # The exact LLaDA-8B shape.
    'llada_8b': dict(d_model=4096, n_layers=32, n_heads=32, d_ff=12_288,
                     max_len=4096, **_LLADA_IDS),
}


def tokenizer_overrides(preset: str, tokenizer) -> dict[str, Any]:
  """Fields a preset takes from a tokenizer: a byte-vocabulary preset (tiny,
  small) used with another tokenizer adopts its special ids and its vocabulary
  size rounded up to a multiple of 128; otherwise nothing (the preset's ids must
  then match, which the trainer checks)."""
  if (tokenizer is None or tokenizer.name == 'byte' or
      PRESETS[preset]['vocab_size'] != BYTE_VOCAB):
    return {}
  return {'vocab_size': -(-tokenizer.vocab_size // 128) * 128,
          **{f'{r}_id': getattr(tokenizer, f'{r}_id')
             for r in tokenizer_lib.SPECIAL_ROLES}}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
  """Returns the `ModelConfig` of a named preset, with fields overridden."""
  if name not in PRESETS:
    raise ValueError(f'unknown model preset {name!r}; known: {sorted(PRESETS)}.')
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f'unknown model config field(s) {sorted(unknown)}; '
                     f'known: {sorted(fields)}.')
  return ModelConfig(**{**PRESETS[name], **overrides})
