"""The config of the mixture-of-experts mask predictors (`llada_moe`, `llada2`
subclass it with their family name); its parameter and FLOP counts."""

from __future__ import annotations

import dataclasses

from dllm_jax import ids as ids_lib
from dllm_jax.models import attention as attention_lib
from dllm_jax.models import grouped_matmul, moe as moe_lib
from dllm_jax.models.llada_config import DTYPES, REMAT_POLICIES

HF_LAYOUTS = ('experts', 'fused', 'w13')


@dataclasses.dataclass(frozen=True)
class MoEConfig(ids_lib.WithSpecialIds):
  """Shape and numerics of an MoE mask predictor (a family subclasses it)."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int  # Dense layers' FFN width.
  n_experts: int
  top_k: int
  moe_d_ff: int  # Each expert's FFN width.
  max_len: int
  shared_d_ff: int = 0  # Shared experts' total width (0: none).
  first_k_dense: int = 0
  # LLaDA-MoE's `moe_layer_freq`: one entry per layer, 0 a dense layer, else
  # MoE (empty: the first `first_k_dense` layers dense, the rest MoE).
  moe_layer_freq: tuple[int, ...] = ()
  router: str = 'softmax'  # softmax | sigmoid (models/moe.py: route).
  # A per-expert router bias: selection only with a sigmoid router (LLaDA2);
  # with a softmax router (LLaDA-MoE) also kept in the weights (moe.py: route).
  expert_bias: bool = False
  n_group: int = 1
  topk_group: int = 1
  norm_topk_prob: bool = False
  routed_scaling: float = 1.0
  fused_qkv: bool = False
  rope_theta: float = 50_000.0
  rotary_fraction: float = 1.0  # RoPE on the first fraction of each head.
  norm_eps: float = 1e-5
  init_std: float = 0.02
  causal: bool = False
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  attention_impl: str | None = None
  remat: str = 'none'
  moe_impl: str = 'auto'  # Routed experts' grouped matmul (models/grouped_matmul.py).
  # Training-only knobs (the function computed is the same):
  capacity_factor: float = 0.0  # Expert-parallel send buffers; 0: dropless.
  aux_loss_coef: float = 0.0  # Switch-style load-balance loss (0: off).
  bias_update_rate: float = 0.0  # Aux-loss-free balance: bias += rate * sign(..).
  hf_layout: str = 'experts'  # experts | fused | w13 (interop/moe_hf.py).
  ids: ids_lib.SpecialIds = ids_lib.BYTE_IDS

  def __post_init__(self):
    # JSON (checkpoints) gives a list: a tuple keeps the config hashable.
    object.__setattr__(self, 'moe_layer_freq', tuple(int(f) for f in self.moe_layer_freq))
    checks = [
        (not self.moe_layer_freq or len(self.moe_layer_freq) == self.n_layers,
         f'moe_layer_freq has {len(self.moe_layer_freq)} entries; need one per layer '
         f'(n_layers={self.n_layers}).'),
        (not (self.moe_layer_freq and self.first_k_dense),
         f'give moe_layer_freq or first_k_dense={self.first_k_dense}, not both.'),
        (self.n_heads % self.n_kv_heads == 0,
         f'n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}.'),
        (self.n_experts % self.n_group == 0,
         f'n_experts={self.n_experts} is not divisible by n_group={self.n_group}.'),
        (0 < self.top_k <= self.n_experts,
         f'top_k={self.top_k} must be in [1, n_experts={self.n_experts}].'),
        (self.topk_group <= self.n_group,
         f'topk_group={self.topk_group} exceeds n_group={self.n_group}.'),
        (self.rotary_dim % 2 == 0, f'rotary dim {self.rotary_dim} must be even.'),
        (self.router in moe_lib.ROUTERS,
         f'router={self.router!r} is not one of {moe_lib.ROUTERS}.'),
        (self.remat in REMAT_POLICIES,
         f'remat={self.remat!r} is not one of {REMAT_POLICIES}.'),
        (self.moe_impl in grouped_matmul.IMPLS,
         f'moe_impl={self.moe_impl!r} is not one of {grouped_matmul.IMPLS}.'),
        (self.hf_layout in HF_LAYOUTS,
         f'hf_layout={self.hf_layout!r} is not one of {HF_LAYOUTS}.'),
        (self.attention_impl in attention_lib.IMPLEMENTATIONS,
         f'attention_impl={self.attention_impl!r} is not one of '
         f'{attention_lib.IMPLEMENTATIONS}.'),
    ] + [(getattr(self, n) in DTYPES, f'{n}={getattr(self, n)!r} is not one of {DTYPES}.')
         for n in ('dtype', 'param_dtype')]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)
    self.ids.check_vocab(self.vocab_size)

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.rotary_fraction)

  @property
  def moe_layers(self) -> tuple[int, ...]:
    """Indices of the mixture-of-experts layers (the others are dense)."""
    if self.moe_layer_freq:
      return tuple(i for i, f in enumerate(self.moe_layer_freq) if f)
    return tuple(range(self.first_k_dense, self.n_layers))

  def is_moe(self, layer: int) -> bool:
    return layer in self.moe_layers

  @property
  def n_dense_layers(self) -> int:
    return self.n_layers - len(self.moe_layers)

  def _attn_params(self) -> int:
    d, dh = self.d_model, self.head_dim
    return d * (self.n_heads + 2 * self.n_kv_heads) * dh + self.n_heads * dh * d

  def _counts(self, experts_used: int) -> int:
    d = self.d_model
    per_layer = self._attn_params() + 2 * self.head_dim + 2 * d
    moe = (d * self.n_experts + self.n_experts * self.expert_bias +
           3 * experts_used * d * self.moe_d_ff + 3 * d * self.shared_d_ff)
    return (self.n_layers * per_layer + self.n_dense_layers * 3 * d * self.d_ff +
            len(self.moe_layers) * moe + 2 * self.vocab_size * d + d)

  def num_params(self) -> int:
    """Parameter count (embedding, output head and every expert included)."""
    return self._counts(self.n_experts)

  def num_active_params(self) -> int:
    """Parameters one token uses: the top_k routed experts, not all of them."""
    return self._counts(self.top_k)

  def forward_flops_per_token(self, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass per token (active experts only; every
    query attends to all keys)."""
    d = self.d_model
    attention = 2 * self._attn_params() + 4 * seq_len * self.n_heads * self.head_dim
    moe = 2 * (d * self.n_experts + 3 * self.top_k * d * self.moe_d_ff +
               3 * d * self.shared_d_ff)
    return (self.n_layers * attention + self.n_dense_layers * 6 * d * self.d_ff +
            len(self.moe_layers) * moe + 2 * d * self.vocab_size)



def bf16_bytes(cfg: MoEConfig) -> int:
  """Bytes of the parameters at bfloat16 (float32 router and biases)."""
  return 2 * cfg.num_params() + 2 * len(cfg.moe_layers) * cfg.n_experts * (
      cfg.d_model + cfg.expert_bias)
