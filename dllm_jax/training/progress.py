"""What a training run tells its user: startup lines, progress lines with
throughput and MFU, TensorBoard scalars and the optional batch log.

Only process 0 writes files; every process prints (launchers usually keep
process 0's output).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np

from dllm_jax import models
from dllm_jax.training import flops


def log(msg: str) -> None:
  print(msg, flush=True)


def _gib(n: int) -> str:
  return f'{n / 2**30:.3f} GiB'


def fmt_time(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def log_start(config: dict, model_cfg, mesh: jax.sharding.Mesh) -> None:
  """The resolved config, the model and the mesh."""
  log('config:\n' + json.dumps(config, indent=1, sort_keys=True))
  log(f'model: {model_cfg.num_params() / 1e6:.2f}M parameters, '
      f'{models.config_to_dict(model_cfg)}')
  log(f'mesh: {dict(mesh.shape)} over {jax.device_count()} '
      f'{jax.devices()[0].device_kind} device(s) in {jax.process_count()} process(es)')


def log_compiled(compiled, seconds: float) -> None:
  """Compile time and per-device memory of the compiled train step."""
  mem = compiled.memory_analysis()
  log(f'train step compiled in {seconds:.1f} s' + (
      '' if mem is None else
      f'; per device: arguments {_gib(mem.argument_size_in_bytes)}, outputs '
      f'{_gib(mem.output_size_in_bytes)}, temporaries {_gib(mem.temp_size_in_bytes)}'))


def batch_fingerprint(batch: dict[str, np.ndarray]) -> str:
  return hashlib.sha1(np.ascontiguousarray(batch['tokens']).tobytes()).hexdigest()[:16]


class Progress:
  """Progress lines and TensorBoard scalars every `log_every` steps, and the
  batch log (`record_batches`: 'step batch-hash' lines in WORKDIR/batches.txt).

  Use as a context manager: files are closed on every exit.
  """

  def __init__(self, workdir: str, *, model_cfg, seq_len: int, batch_size: int,
               total_steps: int, start_step: int, record_batches: bool = False):
    self.total_steps, self.start_step = total_steps, start_step
    self.tokens_per_step = batch_size * seq_len
    self.flops_per_step = (flops.train_flops_per_token(model_cfg, seq_len) *
                           self.tokens_per_step)
    self.peak = flops.peak_flops(jax.devices()[0].device_kind)
    self.writer = self.batch_log = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      if record_batches:
        self.batch_log = open(os.path.join(workdir, 'batches.txt'), 'a')
    self.window_start = self.run_start = time.time()
    self.window_step = start_step

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc) -> None:
    if self.writer is not None:
      self.writer.close()
    if self.batch_log is not None:
      self.batch_log.close()

  def batch(self, step: int, batch: dict[str, np.ndarray]) -> None:
    """Records the batch that step `step` consumed (when asked to)."""
    if self.batch_log is not None:
      self.batch_log.write(f'{step} {batch_fingerprint(batch)}\n')
      self.batch_log.flush()

  def report(self, step: int, metrics: dict[str, Any]) -> None:
    """One progress line and the scalars, for host `metrics` after `step`."""
    now = time.time()
    steps_s = (step - self.window_step) / (now - self.window_start)
    tok_s = self.tokens_per_step * steps_s
    n = jax.device_count()
    perf = {'tokens_per_second': tok_s, 'tokens_per_second_per_device': tok_s / n,
            'tflops_per_device': self.flops_per_step * steps_s / n / 1e12}
    mfu = ''
    if self.peak is not None:
      perf['mfu'] = perf['tflops_per_device'] * 1e12 / self.peak
      mfu = f', MFU {100 * perf["mfu"]:.1f}%'
    eta = (now - self.run_start) / (step - self.start_step) * (self.total_steps - step)
    log(f'step {step}/{self.total_steps}  loss {metrics["loss"]:.4f}  '
        f'grad_norm {metrics["grad_norm"]:.3f}  lr {metrics["learning_rate"]:.2e}  '
        f'{tok_s:,.0f} tokens/s ({perf["tokens_per_second_per_device"]:,.0f}/device, '
        f'{perf["tflops_per_device"]:.3g} TFLOP/s/device{mfu})  left {fmt_time(eta)}')
    if self.writer is not None:
      for name, value in {**metrics, **perf}.items():
        self.writer.add_scalar(f'train/{name}', float(value), step)
      self.writer.flush()
    self.window_start, self.window_step = time.time(), step
