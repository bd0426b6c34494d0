r"""The per-step hot path, fused Pallas kernel vs the jnp twin (XLA); a table.

  python -m launch.bench_kernel                 # on a GPU: LLaDA's vocabulary
  python -m launch.bench_kernel --vocab=4096 --rows=64   # CPU: the twin only

bf16 logits [rows, vocab] in, (candidate, confidence) out, at temperature 0
and with Gumbel noise (counter-based in both, so they agree). The memory floor
is reading the logits once. Times: median of --repeats runs after compiling.
Each launch shape in --kernels (fused.KernelConfig: rows:tile:splits:lanes:warps,
splits 0 = automatic) is timed; the first is the dispatcher's default. On
backends where the kernel does not compile (CPU), only the twin is timed.
"""

import time

from absl import app, flags

from launch import cli

_VOCAB = flags.DEFINE_integer('vocab', 126_464, 'Vocabulary size.')
_ROWS = flags.DEFINE_list('rows', ['384', '12288'], 'Rows (batch x positions).')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed runs.')
_KERNELS = flags.DEFINE_list(
    'kernels', ['16:2048:1:0:8', '16:2048:0:0:8', '8:1024:0:0:4', '4:1024:0:1:4',
                '8:512:0:1:4'],
    'Kernel launch shapes rows:tile:splits:lanes:warps[:stages] to time.')
_INTERPRET = flags.DEFINE_bool('interpret', False, 'Run the kernel in Pallas '
                               'interpret mode (any backend; slow: for testing).')
_BANDWIDTH = flags.DEFINE_float('bandwidth', 3.0e12, 'Memory bandwidth for the floor '
                                '(bytes/s; H100 SXM ~3.0e12 measured).')


def main(argv):
  cli.start(argv)
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import fused  # pylint: disable=g-import-not-at-top

  def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))

  dev = jax.devices()[0]
  shapes = [fused.KernelConfig.parse(k) for k in _KERNELS.value]
  seed = fused.seed_from_key(jax.random.key(0))
  table = []
  for r in map(int, _ROWS.value):
    logits = (jax.random.normal(jax.random.key(1), (r, _VOCAB.value)) * 3).astype(
        jnp.bfloat16)
    floor = 1e3 * r * _VOCAB.value * 2 / _BANDWIDTH.value
    for temperature in (0.0, 1.0):
      kw = dict(temperature=temperature, mask_id=_VOCAB.value - 128)
      twin = jax.jit(functools.partial(fused.candidates_jnp, **kw))
      t_twin = timed(twin, logits, seed)
      print(f'  rows {r}, temperature {temperature}: twin {t_twin:.3f} ms', flush=True)
      if not (_INTERPRET.value or fused.use_kernel()):
        table.append([r, temperature, floor, t_twin, '-', None, '-'])
        continue
      want = np.asarray(twin(logits, seed)[0])
      for shape in shapes:
        kernel = jax.jit(functools.partial(fused.candidates_pallas, kernel=shape,
                                           interpret=_INTERPRET.value, **kw))
        try:
          t_kernel = timed(kernel, logits, seed)
        except Exception as e:  # pylint: disable=broad-except
          print(f'    kernel {shape.name()} failed: {" ".join(str(e).split())[:200]}')
          table.append([r, temperature, floor, t_twin, shape.name(), None, 'failed'])
          continue
        same = np.mean(np.asarray(kernel(logits, seed)[0]) == want)
        table.append([r, temperature, floor, t_twin, shape.name(), t_kernel,
                      f'{same:.4f}'])
        print(f'    kernel {shape.name()}: {t_kernel:.3f} ms', flush=True)
  print(f'\nvocab {_VOCAB.value}, bf16 logits, on {dev.device_kind}; kernel shape '
        'rows:tile:splits:lanes:warps:stages (splits 0: automatic)\n')
  print('| rows | temperature | floor ms | jnp twin (XLA) ms | kernel shape | '
        'Pallas kernel ms | same candidates |')
  print('|---|---|---|---|---|---|---|')
  for r, t, floor, tw, shape, k, same in table:
    ks = '-' if k is None else f'{k:.3f}'
    print(f'| {r} | {t} | {floor:.3f} | {tw:.3f} | {shape} | {ks} | {same} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
