"""The layers every family shares: RMS norm, rotary embedding, default
positions and the SwiGLU gate.

Functions of arrays, so the NNX family (`llada.py`) and the pytree ones
(`moe_transformer.py`) run the same arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ['rms_norm', 'rope', 'default_positions', 'swiglu']


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, dtype) -> jax.Array:
  """RMS norm over the last axis, computed in float32, output in `dtype`.
  x: [..., D], weight: [D]."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (x32 * weight.astype(jnp.float32)).astype(dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding (rotate-half convention). x: [B, L, H, D], positions: [B, L]."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def default_positions(positions: jax.Array | None, b: int, l: int) -> jax.Array:
  """`positions` [B, L], or 0..L-1 for every row when it is None."""
  if positions is None:
    return jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  return positions


def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
  """The SwiGLU feed-forward's gated product: silu(x W_gate) * (x W_up)."""
  return jax.nn.silu(gate) * up
