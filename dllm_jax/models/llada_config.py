"""The `llada` family's config and presets: `ModelConfig` (shape, numerics,
special ids) and the named shapes, tiny CPU ones to the exact LLaDA-8B."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from dllm_jax import ids as ids_lib
from dllm_jax.models import attention as attention_lib

DTYPES = ('float32', 'bfloat16')
REMAT_POLICIES = ('none', 'full', 'dots')
EMBED_GRADS = ('scatter', 'onehot')


@dataclasses.dataclass(frozen=True)
class ModelConfig(ids_lib.WithSpecialIds):
  """Shape and numerics of the mask predictor (hashable: used as a static jit arg)."""

  family: ClassVar[str] = 'llada'

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
  ids: ids_lib.SpecialIds = ids_lib.BYTE_IDS

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
    if self.attention_impl not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f'attention_impl={self.attention_impl!r} is not one of '
                       f'{attention_lib.IMPLEMENTATIONS}.')
    self.ids.check_vocab(self.vocab_size)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def num_params(self) -> int:
    """Parameter count (embedding and output head included)."""
    per_layer = 4 * self.d_model**2 + 3 * self.d_model * self.d_ff + 2 * self.d_model
    return (self.n_layers * per_layer + 2 * self.vocab_size * self.d_model +
            self.d_model)

  def num_active_params(self) -> int:
    return self.num_params()  # Dense: every parameter works on every token.

  def forward_flops_per_token(self, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass per token at sequence length `seq_len`
    (every query attends to all keys: no causal halving)."""
    d, f = self.d_model, self.d_ff
    dense = 2 * (4 * d * d + 3 * d * f)  # q, k, v, out; SwiGLU's three matrices.
    attention = 2 * 2 * seq_len * d  # Scores and weighted values, all L keys.
    head = 2 * d * self.vocab_size
    return self.n_layers * (dense + attention) + head


BYTE_VOCAB = 264  # 261 byte-tokenizer ids, padded to a multiple of 8.

_LLADA = dict(vocab_size=126_464, ids=ids_lib.SpecialIds(
    mask=126_336, bos=126_080, eos=126_081, eot=126_348,
    pad=126_081))  # LLaDA pads SFT answers with EOS.

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
                     max_len=4096, **_LLADA),
    # The exact LLaDA-8B shape.
    'llada_8b': dict(d_model=4096, n_layers=32, n_heads=32, d_ff=12_288,
                     max_len=4096, **_LLADA),
}
