r"""Train-step throughput and MFU on the current device; prints a table.

  python -m launch.bench_train                                  # tiny, CPU-sized
  python -m launch.bench_train --preset=llada_1b --dtype=bfloat16 --seq_len=2048 \
      --batch=8

Random tokens, the pretraining objective, AdamW; the step is compiled ahead of
time (its memory analysis is printed), then --steps steps are timed after
--warmup untimed ones. FLOPs are analytic (dllm_jax/flops.py).
"""

import time

from absl import app, flags

from launch import cli

_PRESET = flags.DEFINE_string('preset', 'tiny', 'Model preset.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute dtype (params stay fp32).')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 128, 'Sequence length.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Global batch size.')
_ACCUM = flags.DEFINE_integer('grad_accum_steps', 1, 'Gradient accumulation steps.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dllm_jax import flops, presets  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import optimizer as opt_lib, train_step as ts  # pylint: disable=g-import-not-at-top

  cfg = presets.get_preset(_PRESET.value, dtype=_DTYPE.value,
                           max_len=max(_SEQ_LEN.value, presets.PRESETS[_PRESET.value]['max_len']))
  opt, sched = opt_lib.make_optimizer(
      lr=1e-4, total_steps=1000, warmup_steps=10, decay_fraction=0.1,
      final_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  state = jax.jit(lambda k: ts.init_train_state(cfg, opt, k))(jax.random.key(0))
  step = ts.make_train_step(cfg, opt, sched, grad_accum_steps=_ACCUM.value)
  tokens = jax.random.randint(jax.random.key(1), (_BATCH.value, _SEQ_LEN.value), 0,
                              cfg.mask_id)
  batch = {'tokens': tokens}
  key = jax.random.key(2)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  print(f'compiled in {time.perf_counter() - t0:.1f} s', flush=True)
  mem = compiled.memory_analysis()
  if mem is not None:
    print(f'memory: arguments {mem.argument_size_in_bytes / 2**30:.2f} GiB, outputs '
          f'{mem.output_size_in_bytes / 2**30:.2f} GiB, temporaries '
          f'{mem.temp_size_in_bytes / 2**30:.2f} GiB', flush=True)
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / _STEPS.value

  dev = jax.devices()[0]
  n_tok = _BATCH.value * _SEQ_LEN.value
  tflops = flops.train_flops_per_token(cfg, _SEQ_LEN.value) * n_tok / dt / 1e12
  peak = flops.peak_flops(dev.device_kind)
  mfu = '-' if peak is None else f'{100 * tflops * 1e12 / peak:.1f}%'
  print(f'\n{_PRESET.value} ({cfg.num_params() / 1e9:.2f}B params), {_DTYPE.value} '
        f'compute, fp32 params, on {jax.device_count()} x {dev.device_kind}\n')
  print('| batch x seq | step ms | tokens/s/device | TFLOP/s/device | MFU | loss |')
  print('|---|---|---|---|---|---|')
  print(f'| {_BATCH.value} x {_SEQ_LEN.value} | {1e3 * dt:.1f} | '
        f'{n_tok / dt / jax.device_count():,.0f} | {tflops / jax.device_count():.1f} | '
        f'{mfu} | {float(metrics["loss"]):.3f} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
