"""How many tokens each denoising step commits."""

from __future__ import annotations

import jax.numpy as jnp
import jax


def tokens_per_step(num_masked: jax.Array, steps: int, step: jax.Array) -> jax.Array:
  """LLaDA's schedule: of N masked tokens over s steps, step i commits
  floor(N / s) tokens, plus one for the first N mod s steps.

  num_masked [B] int, step [] int in [0, steps) -> [B] int.
  """
  base, remainder = jnp.divmod(num_masked, steps)
  return base + (step < remainder).astype(base.dtype)


def transfer_schedule(num_masked: jax.Array, steps: int) -> jax.Array:
  """The whole schedule, [B, steps] (sums to num_masked per row)."""
  return jnp.stack([tokens_per_step(num_masked, steps, jnp.asarray(i))
                    for i in range(steps)], axis=1)
