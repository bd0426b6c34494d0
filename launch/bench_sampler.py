r"""Sampling speed of the denoising sampler, variants side by side; prints a table.

  python -m launch.bench_sampler                       # tiny preset, CPU-sized
  python -m launch.bench_sampler --preset=llada_8b --dtype=bfloat16 \
      --prompt_len=128 --gen_length=256 --block_length=32 --tokens_per_step=1,8

Random weights (speed does not depend on them). Each variant commits a fixed
number of tokens per step (steps = gen_length / tokens_per_step) with full
recompute of the canvas every step; compile time is excluded; the time is the
median of --repeats runs.
"""

import time

from absl import app, flags

from launch import cli

_PRESET = flags.DEFINE_string('preset', 'tiny', 'Model preset.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute and parameter dtype.')
_BATCH = flags.DEFINE_list('batch', ['1'], 'Batch sizes.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Prompt tokens.')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 64, 'Generated tokens.')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 16, 'Block length.')
_TOKENS_PER_STEP = flags.DEFINE_list('tokens_per_step', ['1', '4'],
                                     'Fixed tokens committed per step.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per variant.')


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax import model, presets  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top

  cfg = presets.get_preset(_PRESET.value, dtype=_DTYPE.value, param_dtype=_DTYPE.value)
  params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.key(0))
  dev = jax.devices()[0]
  print(f'device: {dev.device_kind} ({dev.platform}); preset {cfg} ', flush=True)
  rows = []
  for b in map(int, _BATCH.value):
    prompt = np.random.default_rng(0).integers(0, 200, (b, _PROMPT_LEN.value))
    for k in map(int, _TOKENS_PER_STEP.value):
      steps = _GEN_LENGTH.value // k
      sc = gen.SamplingConfig(steps=steps, gen_length=_GEN_LENGTH.value,
                              block_length=_BLOCK_LENGTH.value)
      run = lambda: gen.generate(params, prompt, jax.random.key(1), config=cfg,
                                 sampling=sc).block_until_ready()
      t0 = time.perf_counter()
      run()
      compile_s = time.perf_counter() - t0
      times = []
      for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
      t = float(np.median(times))
      stats = dev.memory_stats() or {}
      peak = stats.get('peak_bytes_in_use')
      rows.append((b, f'fixed {k}/step', steps, b * _GEN_LENGTH.value / t,
                   1e3 * t / steps, k, compile_s,
                   '-' if peak is None else f'{peak / 2**30:.1f}'))
      print(f'  batch {b}, {k} tokens/step: {rows[-1][3]:.1f} tokens/s', flush=True)
  print(f'\n{_PRESET.value}, {_DTYPE.value}, prompt {_PROMPT_LEN.value}, gen_length '
        f'{_GEN_LENGTH.value}, block {_BLOCK_LENGTH.value}, on {dev.device_kind}\n')
  print('| batch | variant | steps | tokens/s | ms/step | tokens/step | '
        'compile s | peak GiB |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.1f} | {r[4]:.2f} | {r[5]} | '
          f'{r[6]:.1f} | {r[7]} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
