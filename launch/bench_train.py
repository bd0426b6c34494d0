r"""Train-step throughput and MFU on the current device; prints a table.

  python -m launch.bench_train                                  # tiny, CPU-sized
  python -m launch.bench_train --preset=llada_1b --dtype=bfloat16 --seq_len=2048 \
      --batch=8,16,8 --grad_accum_steps=1,2,1 --segments=false,false,true

Random tokens, the pretraining objective, AdamW. The list flags (--batch,
--grad_accum_steps, --segments, --remat, --embed_grad) give one row per position (a flag with
one value applies to every row); each row's step is compiled ahead of time, then
--steps steps are timed after --warmup untimed ones, and the next row starts.
`--segments=true` passes segment ids (one document per row), as packed data does:
attention then takes its masked path; without them the pretraining batch is
mask-free (the 1% random-length cut is a key length). FLOPs are analytic
(dllm_jax/flops.py); rematerialised work is not counted.
"""

import time

from absl import app, flags

from launch import cli

_PRESET = flags.DEFINE_string('preset', 'tiny', 'Model preset.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
_PARAM_DTYPE = flags.DEFINE_string('param_dtype', 'float32',
                                   'Parameter (and AdamW state) dtype.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 128, 'Sequence length.')
_BATCH = flags.DEFINE_list('batch', ['32'], 'Global batch size of each row.')
_ACCUM = flags.DEFINE_list('grad_accum_steps', ['1'], 'Gradient accumulation steps.')
_SEGMENTS = flags.DEFINE_list('segments', ['false'],
                              'Pass segment ids (the masked attention path): '
                              'true, false or both.')
_REMAT = flags.DEFINE_list('remat', ['none'], 'Rematerialisation policies.')
_EMBED_GRAD = flags.DEFINE_list('embed_grad', ['scatter'],
                                'Input-embedding gradient: scatter or onehot.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir', None, 'If set, also trace --profile_steps steps of each row into '
    'PROFILE_DIR/row<i> (read with `python -m launch.profile_summary`).')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 2, 'Steps traced per row.')


def _bool(text: str) -> bool:
  if text.lower() not in ('true', 'false'):
    raise app.UsageError(f'--segments takes true/false, not {text!r}.')
  return text.lower() == 'true'


def _rows() -> list[tuple[int, int, bool, str, str]]:
  """(batch, accum, segments, remat, embed_grad) per row: the list flags
  zipped, single values broadcast."""
  lists = [_BATCH.value, _ACCUM.value, _SEGMENTS.value, _REMAT.value, _EMBED_GRAD.value]
  n = max(len(v) for v in lists)
  if any(len(v) not in (1, n) for v in lists):
    raise app.UsageError('--batch, --grad_accum_steps, --segments, --remat and '
                         f'--embed_grad each take one value or {n} (one per row).')
  b, a, s, r, e = ([v[0]] * n if len(v) == 1 else v for v in lists)
  return [(int(b[i]), int(a[i]), _bool(s[i]), r[i], e[i]) for i in range(n)]


def main(argv):
  cli.start(argv)
  runs = _rows()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dllm_jax import flops, presets  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import optimizer as opt_lib, train_step as ts  # pylint: disable=g-import-not-at-top

  opt, sched = opt_lib.make_optimizer(
      lr=1e-4, total_steps=1000, warmup_steps=10, decay_fraction=0.1,
      final_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  dev = jax.devices()[0]
  peak = flops.peak_flops(dev.device_kind)
  seq = _SEQ_LEN.value
  rows = []
  for row, (batch_size, accum, segments, remat, embed_grad) in enumerate(runs):
    cfg = presets.get_preset(
        _PRESET.value, dtype=_DTYPE.value, param_dtype=_PARAM_DTYPE.value,
        remat=remat, embed_grad=embed_grad,
        max_len=max(seq, presets.PRESETS[_PRESET.value]['max_len']))
    name = (f'{batch_size} x {seq}' + (f', accum {accum}' if accum > 1 else '')
            + (', segments' if segments else '')
            + (f', remat {remat}' if remat != 'none' else '')
            + (f', {embed_grad} embedding grad' if embed_grad != 'scatter' else ''))
    print(f'== {name}', flush=True)
    state = jax.jit(lambda k, c=cfg: ts.init_train_state(c, opt, k))(jax.random.key(0))
    step = ts.make_train_step(cfg, opt, sched, grad_accum_steps=accum)
    tokens = jax.random.randint(jax.random.key(1), (batch_size, seq), 0, cfg.mask_id)
    batch = {'tokens': tokens}
    if segments:
      batch['segment_ids'] = jnp.ones_like(tokens)
    key = jax.random.key(2)
    t0 = time.perf_counter()
    try:
      compiled = step.lower(state, batch, key).compile()
    except Exception as e:  # pylint: disable=broad-except
      # Most often out of memory: report the row and go on with the next.
      print(f'   failed to compile: {" ".join(str(e).split())[:300]}', flush=True)
      rows.append(f'| {name} | failed to compile | - | - | - | - | - | - |')
      del state
      continue
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    mem_text = '-'
    if mem is not None:
      mem_text = f'{(mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**30:.1f}'
      print(f'   compiled in {compile_s:.1f} s; memory: arguments '
            f'{mem.argument_size_in_bytes / 2**30:.2f} GiB, outputs '
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
    if _PROFILE_DIR.value:
      with jax.profiler.trace(f'{_PROFILE_DIR.value}/row{row}',
                              create_perfetto_trace=True):
        for _ in range(_PROFILE_STEPS.value):
          state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
    n_tok = batch_size * seq
    tflops = flops.train_flops_per_token(cfg, seq) * n_tok / dt / 1e12
    tflops /= jax.device_count()
    mfu = '-' if peak is None else f'{100 * tflops * 1e12 / peak:.1f}%'
    rows.append(f'| {name} | {1e3 * dt:.1f} | {n_tok / dt / jax.device_count():,.0f} '
                f'| {tflops:.1f} | {mfu} | {compile_s:.1f} | {mem_text} '
                f'| {float(metrics["loss"]):.3f} |')
    print('   ' + rows[-1], flush=True)
    del state, compiled, metrics

  print(f'\n{_PRESET.value} ({cfg.num_params() / 1e9:.2f}B params), {_DTYPE.value} '
        f'compute, {_PARAM_DTYPE.value} params and AdamW state, on '
        f'{jax.device_count()} x {dev.device_kind}\n')
  print('| batch x seq | step ms | tokens/s/device | TFLOP/s/device | MFU | compile s '
        '| args + temps GiB | loss |')
  print('|---|---|---|---|---|---|---|---|')
  print('\n'.join(rows))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
