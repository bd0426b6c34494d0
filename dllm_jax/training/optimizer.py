"""AdamW with LLaDA's warmup-stable-decay schedule and gradient clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def wsd_schedule(peak_lr: float, total_steps: int, warmup_steps: int,
                 decay_fraction: float, final_lr_ratio: float) -> optax.Schedule:
  """Warmup-stable-decay: linear 0 -> peak over `warmup_steps`, constant, then
  linear down to `final_lr_ratio * peak` over the last `decay_fraction` of steps.

  (LLaDA-8B: warmup to 4e-4 over 2000 steps, stable, then decays; the decay stage
  here is one linear segment.)
  """
  if not 0 <= decay_fraction <= 1:
    raise ValueError(f'decay_fraction must be in [0, 1], got {decay_fraction}.')
  decay_steps = int(round(total_steps * decay_fraction))
  warmup_steps = warmup_used(total_steps, warmup_steps, decay_fraction)
  stable_steps = max(total_steps - warmup_steps - decay_steps, 0)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1)),
       optax.constant_schedule(peak_lr),
       optax.linear_schedule(peak_lr, peak_lr * final_lr_ratio, max(decay_steps, 1))],
      boundaries=[warmup_steps, warmup_steps + stable_steps])


def warmup_used(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
  """The warmup the schedule runs: at most the steps before the decay."""
  return min(warmup_steps, total_steps - int(round(total_steps * decay_fraction)))


def warmup_note(total_steps: int, warmup_steps: int, decay_fraction: float) -> str | None:
  """A line saying the warmup was shortened to fit the run, or None."""
  used = warmup_used(total_steps, warmup_steps, decay_fraction)
  if used == warmup_steps:
    return None
  return (f'optimizer.warmup_steps={warmup_steps} does not fit before the decay of '
          f'this {total_steps}-step run (decay_fraction={decay_fraction}): the '
          f'learning rate warms up over {used} steps instead.')


def _decay_mask(params):
  """Weight decay on matrices only (not on norm scales)."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def make_optimizer(*, lr: float, total_steps: int, warmup_steps: int,
                   decay_fraction: float, final_lr_ratio: float, b1: float, b2: float,
                   weight_decay: float, clip_norm: float
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule)."""
  schedule = wsd_schedule(lr, total_steps, warmup_steps, decay_fraction,
                          final_lr_ratio)
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                           mask=_decay_mask))
  return optax.chain(*chain), schedule
