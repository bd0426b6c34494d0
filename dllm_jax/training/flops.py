"""Analytic FLOP counts and per-device peaks, for TFLOP/s and MFU.

Attention is bidirectional, so every query attends to all L keys: no causal
halving (for the autoregressive twin the same count is used, as the kernels
compute the full score matrix too).
"""

from __future__ import annotations

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_BF16_FLOPS = {
    'h100': 989e12,
    'h200': 989e12,
    'a100': 312e12,
    'tpu v4': 275e12,
    'tpu v5 lite': 197e12,  # v5e
    'tpu v5e': 197e12,
    'tpu v5p': 459e12,
    'tpu v5': 459e12,  # v5p reports 'TPU v5'
    'tpu v6 lite': 918e12,  # v6e (Trillium)
    'tpu v6e': 918e12,
}


def forward_flops_per_token(cfg, seq_len: int) -> float:
  """Matmul FLOPs of one forward pass, per token, at sequence length `seq_len`
  (the model family's count: active parameters only for a mixture of experts)."""
  return cfg.forward_flops_per_token(seq_len)


def train_flops_per_token(cfg, seq_len: int) -> float:
  """Forward + backward (2x forward) FLOPs per token, without rematerialisation."""
  return 3 * forward_flops_per_token(cfg, seq_len)


def peak_flops(device_kind: str) -> float | None:
  """Peak bf16 FLOP/s of a device from its `device_kind`, or None if unknown."""
  kind = device_kind.lower()
  for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
    if name in kind:
      return PEAK_BF16_FLOPS[name]
  return None
