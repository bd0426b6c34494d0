"""Timing shared by the benchmark launchers: one train-step configuration, and
the median of repeated runs of any callable.

`time_train_step`: random tokens, an objective (default pretraining), AdamW;
the step is compiled ahead of time, run `warmup` times untimed, then `steps`
times on the clock. `median_time`: the first call (compile) timed apart.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

import jax
import jax.numpy as jnp

from dllm_jax.models import ModelConfig
from dllm_jax.training import optimizer as opt_lib, train_step as ts


@dataclasses.dataclass
class StepTiming:
  seconds: float  # Per step.
  compile_seconds: float
  memory: Any  # `compiled.memory_analysis()` (None where the backend has none).
  loss: float  # Of the last step run.
  step_seconds: tuple[float, ...] = ()  # Each timed step (with `each_step`).


def median_time(run: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
  """(last output, median seconds of `repeats` timed calls, seconds of the first
  call: compile included). `run` must block until its result is ready."""
  t0 = time.perf_counter()
  out = run()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
  return out, float(np.median(times)), compile_s


def document_ids(seq_len: int, documents: int, seed: int = 0) -> jax.Array:
  """[seq_len] segment ids 1..documents of random contiguous lengths."""
  if documents == 1:
    return jnp.ones((seq_len,), jnp.int32)
  cuts = jax.random.choice(jax.random.key(seed), jnp.arange(1, seq_len),
                           (documents - 1,), replace=False)
  starts = jnp.zeros((seq_len,), jnp.int32).at[cuts].set(1)
  return 1 + jnp.cumsum(starts)


def time_train_step(cfg: ModelConfig, batch_size: int, seq_len: int, *, steps: int,
                    warmup: int = 1, grad_accum_steps: int = 1,
                    segments: int = 0, profile_dir: str | None = None,
                    profile_steps: int = 2, objective: str = 'pretrain',
                    block_options=None, each_step: bool = False,
                    log=print) -> StepTiming:
  """Compiles and times the train step of `cfg` on a [batch_size, seq_len] batch.

  `segments`: pass segment ids of that many documents per row (0: none; the
  documents' lengths are random, the same in every row; what packed data
  passes). `profile_dir`: afterwards trace `profile_steps` more steps there
  (Perfetto trace included, for `launch.profile_summary`). `objective` and
  `block_options` (a `BlockDiffusionOptions`, objective block_diffusion) go to
  `make_train_step`. `each_step`: also time every step on its own (waiting for
  each: on a shared machine the fastest is the least disturbed). Compile errors
  (most often out of memory) propagate.
  """
  opt, sched = opt_lib.make_optimizer(
      lr=1e-4, total_steps=1000, warmup_steps=10, decay_fraction=0.1,
      final_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  state = jax.jit(lambda k: ts.init_train_state(cfg, opt, k))(jax.random.key(0))
  step = ts.make_train_step(cfg, opt, sched, grad_accum_steps=grad_accum_steps,
                            objective=objective, block_options=block_options)
  tokens = jax.random.randint(jax.random.key(1), (batch_size, seq_len), 0, cfg.ids.mask)
  batch = {'tokens': tokens}
  if segments:
    batch['segment_ids'] = jnp.broadcast_to(
        document_ids(seq_len, segments), tokens.shape).astype(jnp.int32)
  key = jax.random.key(2)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if mem is not None:
    log(f'   compiled in {compile_s:.1f} s; memory: arguments '
        f'{mem.argument_size_in_bytes / 2**30:.2f} GiB, outputs '
        f'{mem.output_size_in_bytes / 2**30:.2f} GiB, temporaries '
        f'{mem.temp_size_in_bytes / 2**30:.2f} GiB')
  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(metrics)
  each = []
  t0 = time.perf_counter()
  for _ in range(steps):
    t_step = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    if each_step:
      jax.block_until_ready(metrics)
      each.append(time.perf_counter() - t_step)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / steps
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for _ in range(profile_steps):
        state, metrics = compiled(state, batch, key)
      jax.block_until_ready(metrics)
  return StepTiming(seconds=dt, compile_seconds=compile_s, memory=mem,
                    loss=float(metrics['loss']), step_seconds=tuple(each))
