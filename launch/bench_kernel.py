r"""The per-step hot path, fused Pallas kernel vs the jnp twin (XLA); a table.

  python -m launch.bench_kernel                 # on a GPU: LLaDA's vocabulary
  python -m launch.bench_kernel --vocab=4096 --rows=64   # CPU: the twin only

bf16 logits [rows, vocab] in, (candidate, confidence) out, at temperature 0
and with Gumbel noise (counter-based in both, so they agree). The memory floor
is reading the logits once. Times: median of --repeats runs after compiling.
The XLA twin is timed as is and with its rows reduced in vocabulary slices
(--twin_splits), then each kernel launch shape in --kernels
(fused.KernelConfig: rows:tile:splits:lanes:warps, splits 0 = automatic; the
first is the dispatcher's default). On backends where the kernel does not
compile (CPU), only the twin is timed unless --interpret.

With --head_dim, the output head too (hidden [rows, head_dim] x [head_dim,
vocab], bf16), at --head_rows and --head_temperatures: the head matmul alone,
then followed by the XLA twin (the reference) and by the kernel, against the
fused head + candidate kernel (`fused_head`, shapes --head_kernels:
rows:tile:k_tile:splits:warps), which never writes the logits. --rows= (empty)
times the head rows only.
"""

import time

from absl import app, flags

from launch import cli

_VOCAB = flags.DEFINE_integer('vocab', 126_464, 'Vocabulary size.')
_ROWS = flags.DEFINE_list('rows', ['384', '12288'], 'Rows (batch x positions).')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed runs.')
_KERNELS = flags.DEFINE_list(
    'kernels', ['8:1024:0:0:4', '16:2048:1:0:8', '16:2048:0:0:8', '4:1024:0:1:4',
                '8:512:0:1:4'],
    'Kernel launch shapes rows:tile:splits:lanes:warps[:stages] to time.')
_TWIN_SPLITS = flags.DEFINE_list(
    'twin_splits', ['1', '16'], 'Vocabulary splits of the XLA twin to time (the '
    'first is the reference the others are compared with).')
_INTERPRET = flags.DEFINE_bool('interpret', False, 'Run the kernel in Pallas '
                               'interpret mode (any backend; slow: for testing).')
_HEAD_DIM = flags.DEFINE_integer(
    'head_dim', 0, 'If > 0, also time the output head (hidden [rows, head_dim] x '
    '[head_dim, vocab], bf16) alone and followed by the candidate pass, at '
    '--head_rows: what writing and re-reading the logits costs, i.e. what a kernel '
    'fusing the head into the candidate pass could save at most.')
_HEAD_ROWS = flags.DEFINE_list('head_rows', ['32', '384', '12288'],
                               'Rows of the --head_dim timing.')
_HEAD_TEMPERATURES = flags.DEFINE_list('head_temperatures', ['0', '1'],
                                       'Temperatures of the --head_dim timing.')
_HEAD_KERNELS = flags.DEFINE_list(
    'head_kernels', ['64:128:64:0:4', '32:256:64:0:4', '128:128:64:0:8'],
    'Fused head kernel launch shapes rows:tile:k_tile:splits:warps[:stages] '
    '(--head_dim timing; the first is the default).')
_PEAK_FLOPS = flags.DEFINE_float('peak_flops', 989e12, 'Dense bf16 rate for the '
                                 "head rows' floor (FLOP/s; H100/H200 SXM).")
_BANDWIDTH = flags.DEFINE_float('bandwidth', 3.0e12, 'Memory bandwidth for the floor '
                                '(bytes/s; H100 SXM ~3.0e12 measured).')


def _timed(fn, *args) -> float:
  """Median milliseconds of --repeats calls (after one that compiles)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def _candidate_rows(r: int, shapes, run_kernel: bool, seed) -> list[list]:
  """Table rows of the candidate pass over r rows: the XLA twins, then the
  kernel shapes, at temperatures 0 and 1 (the first row of each is the reference)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.kernels import fused  # pylint: disable=g-import-not-at-top
  table = []
  logits = (jax.random.normal(jax.random.key(1), (r, _VOCAB.value)) * 3).astype(
      jnp.bfloat16)
  floor = 1e3 * r * _VOCAB.value * 2 / _BANDWIDTH.value
  for temperature in (0.0, 1.0):
    kw = dict(temperature=temperature, mask_id=_VOCAB.value - 128)
    impls = [('XLA twin' + (f', {n} splits' if n > 1 else ''),
              functools.partial(fused.candidates_jnp, splits=n, **kw))
             for n in map(int, _TWIN_SPLITS.value)]
    if run_kernel:
      impls += [(f'kernel {shape.name()}',
                 functools.partial(fused.candidates_pallas, kernel=shape,
                                   interpret=_INTERPRET.value, **kw))
                for shape in shapes]
    want, t_twin = None, None
    for name, fn in impls:
      fn = jax.jit(fn)
      try:
        ms = _timed(fn, logits, seed)
      except Exception as e:  # pylint: disable=broad-except
        print(f'  {name} failed: {" ".join(str(e).split())[:200]}', flush=True)
        table.append([r, temperature, floor, name, None, None, 'failed'])
        continue
      got = np.asarray(fn(logits, seed)[0])
      if want is None:  # The first implementation is the reference.
        want, t_twin = got, ms
      table.append([r, temperature, floor, name, ms, t_twin / ms,
                    f'{np.mean(got == want):.4f}'])
      print(f'  rows {r}, temperature {temperature}, {name}: {ms:.3f} ms', flush=True)
  return table


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax.kernels import fused  # pylint: disable=g-import-not-at-top

  dev = jax.devices()[0]
  shapes = [fused.KernelConfig.parse(k) for k in _KERNELS.value]
  run_kernel = _INTERPRET.value or fused.use_kernel()
  seed = fused.seed_from_key(jax.random.key(0))
  table = []
  for r in map(int, _ROWS.value):
    table += _candidate_rows(r, shapes, run_kernel, seed)
  if _HEAD_DIM.value:
    table += _head_rows(_timed, seed, run_kernel, shapes[0] if shapes else None)
  print(f'\nvocab {_VOCAB.value}, bf16 logits, on {dev.device_kind}; kernel shape '
        'rows:tile:splits:lanes:warps:stages (splits 0: automatic), fused head kernel '
        'rows:tile:k_tile:splits:warps:stages; "x first": speed-up over the first '
        '(candidate) row of its group\n')
  print('| rows | temperature | floor ms | implementation | ms | x first | '
        'same candidates |')
  print('|---|---|---|---|---|---|---|')
  for r, t, floor, name, ms, x, same in table:
    ms_s = '-' if ms is None else f'{ms:.3f}'
    x_s = '-' if x is None else f'{x:.2f}'
    print(f'| {r} | {t} | {floor:.3f} | {name} | {ms_s} | {x_s} | {same} |')


def _head_rows(timed, seed, run_kernel, shape):
  """Rows of the head timing: per rows and temperature, the head alone (once),
  head + twin (the reference of "x first" and "same candidates"), head + kernel,
  and the fused head kernel in each --head_kernels shape.

  The floor is the larger of reading the head's weights and writing the logits
  once, and the matmul at --peak_flops."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.kernels import fused  # pylint: disable=g-import-not-at-top
  from dllm_jax.kernels import fused_head  # pylint: disable=g-import-not-at-top
  d, v = _HEAD_DIM.value, _VOCAB.value
  w = (jax.random.normal(jax.random.key(2), (d, v)) * d ** -0.5).astype(jnp.bfloat16)
  head = lambda h: jnp.dot(h, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16)
  fuse_shapes = ([fused_head.HeadKernelConfig.parse(k) for k in _HEAD_KERNELS.value]
                 if _INTERPRET.value or fused_head.use_kernel() else [])
  rows = []
  for r in map(int, _HEAD_ROWS.value):
    h = jax.random.normal(jax.random.key(3), (r, d)).astype(jnp.bfloat16)
    floor = 1e3 * max((d * v * 2 + r * v * 2) / _BANDWIDTH.value,
                      2 * r * d * v / _PEAK_FLOPS.value)
    for i, t in enumerate(map(float, _HEAD_TEMPERATURES.value)):
      kw = dict(temperature=t, mask_id=v - 128)
      impls = [(f'head {d} x {v} alone', head)] if i == 0 else []
      impls.append(('head, then XLA twin',
                    lambda h, kw=kw: fused.candidates_jnp(head(h), seed, **kw)))
      if run_kernel and shape is not None:
        impls.append((f'head, then kernel {shape.name()}',
                      lambda h, kw=kw: fused.candidates_pallas(
                          head(h), seed, kernel=shape, interpret=_INTERPRET.value, **kw)))
      impls += [(f'fused head kernel {fs.name()}',
                 lambda h, kw=kw, fs=fs: fused_head.head_candidates_pallas(
                     h, w, seed, kernel=fs, logits_dtype=jnp.bfloat16,
                     interpret=_INTERPRET.value, **kw)) for fs in fuse_shapes]
      t_ref, want = None, None
      for name, fn in impls:
        fn = jax.jit(fn)
        try:
          ms = timed(fn, h)
        except Exception as e:  # pylint: disable=broad-except
          print(f'  {name} failed: {" ".join(str(e).split())[:200]}', flush=True)
          rows.append([r, t, floor, name, None, None, 'failed'])
          continue
        if name.endswith('alone'):
          rows.append([r, t, floor, name, ms, None, '-'])
        else:
          got = np.asarray(fn(h)[0])
          if want is None:
            want, t_ref = got, ms
          rows.append([r, t, floor, name, ms, t_ref / ms, f'{np.mean(got == want):.4f}'])
        print(f'  rows {r}, temperature {t}, {name}: {ms:.3f} ms', flush=True)
  return rows


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
