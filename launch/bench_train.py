r"""Train-step throughput and MFU on the current device; prints a table.

  python -m launch.bench_train                                  # tiny, CPU-sized
  python -m launch.bench_train --preset=llada_1b --dtype=bfloat16 --seq_len=2048 \
      --batch=8,16,8 --grad_accum_steps=1,2,1 --segments=false,false,true

Random tokens, the pretraining objective, AdamW. The list flags (--batch,
--grad_accum_steps, --segments, --remat, --embed_grad) give one row per position (a flag with
one value applies to every row); each row's step is compiled ahead of time, then
--steps steps are timed after --warmup untimed ones, and the next row starts.
`--segments=true` passes segment ids (one document per row), `--segments=N` N
documents of random lengths per row, as packed data does: attention then takes its
masked path, or with `--attention_impl=cudnn_packed` cuDNN's packed layout (no
mask); without segments the pretraining batch is mask-free (the 1% random-length
cut is a key length). FLOPs are analytic
(dllm_jax/training/flops.py); rematerialised work is not counted.
"""

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
                              'Pass segment ids: false, true (one document per '
                              'row) or N (N documents of random lengths per row).')
_ATTENTION = flags.DEFINE_list('attention_impl', ['default'],
                               'Attention implementation per row: default (the '
                               "config's choice), xla, cudnn or cudnn_packed.")
_REMAT = flags.DEFINE_list('remat', ['none'], 'Rematerialisation policies.')
_EMBED_GRAD = flags.DEFINE_list('embed_grad', ['scatter'],
                                'Input-embedding gradient: scatter or onehot.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir', None, 'If set, also trace --profile_steps steps of each row into '
    'PROFILE_DIR/row<i> (read with `python -m launch.profile_summary`).')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 2, 'Steps traced per row.')


def _documents(text: str) -> int:
  low = text.lower()
  if low in ('true', 'false'):
    return int(low == 'true')
  if not low.isdigit():
    raise app.UsageError(f'--segments takes true, false or a document count, not {text!r}.')
  return int(low)


def _attention(text: str) -> str | None:
  if text == 'default':
    return None
  if text not in ('xla', 'cudnn', 'cudnn_packed'):
    raise app.UsageError(f'--attention_impl takes default, xla, cudnn or '
                         f'cudnn_packed, not {text!r}.')
  return text


def _rows() -> list[tuple[int, int, int, str, str, str | None]]:
  """(batch, accum, documents, remat, embed_grad, attention_impl) per row: the
  list flags zipped, single values broadcast."""
  lists = [_BATCH.value, _ACCUM.value, _SEGMENTS.value, _REMAT.value, _EMBED_GRAD.value,
           _ATTENTION.value]
  n = max(len(v) for v in lists)
  if any(len(v) not in (1, n) for v in lists):
    raise app.UsageError('--batch, --grad_accum_steps, --segments, --remat, '
                         f'--embed_grad and --attention_impl each take one value or '
                         f'{n} (one per row).')
  b, a, s, r, e, i = ([v[0]] * n if len(v) == 1 else v for v in lists)
  return [(int(b[j]), int(a[j]), _documents(s[j]), r[j], e[j], _attention(i[j]))
          for j in range(n)]


def main(argv):
  cli.start(argv)
  runs = _rows()
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax import models  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import flops  # pylint: disable=g-import-not-at-top
  from launch import step_timing  # pylint: disable=g-import-not-at-top

  dev = jax.devices()[0]
  peak = flops.peak_flops(dev.device_kind)
  seq = _SEQ_LEN.value
  rows = []
  for row, (batch_size, accum, segments, remat, embed_grad, impl) in enumerate(runs):
    cfg = models.get_preset(
        _PRESET.value, dtype=_DTYPE.value, param_dtype=_PARAM_DTYPE.value,
        remat=remat, embed_grad=embed_grad, attention_impl=impl,
        max_len=max(seq, models.PRESETS[_PRESET.value]['max_len']))
    name = (f'{batch_size} x {seq}' + (f', accum {accum}' if accum > 1 else '')
            + (f', {segments} document{"s" * (segments > 1)}' if segments else '')
            + (f', {impl}' if impl else '')
            + (f', remat {remat}' if remat != 'none' else '')
            + (f', {embed_grad} embedding grad' if embed_grad != 'scatter' else ''))
    print(f'== {name}', flush=True)
    try:
      t = step_timing.time_train_step(
          cfg, batch_size, seq, steps=_STEPS.value, warmup=_WARMUP.value,
          grad_accum_steps=accum, segments=segments,
          profile_dir=_PROFILE_DIR.value and f'{_PROFILE_DIR.value}/row{row}',
          profile_steps=_PROFILE_STEPS.value,
          log=lambda msg: print(msg, flush=True))
    except Exception as e:  # pylint: disable=broad-except
      # Most often out of memory: report the row and go on with the next.
      print(f'   failed: {" ".join(str(e).split())[:300]}', flush=True)
      rows.append(f'| {name} | failed | - | - | - | - | - | - |')
      continue
    mem = t.memory
    mem_text = ('-' if mem is None else
                f'{(mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**30:.1f}')
    n_tok = batch_size * seq
    tflops = flops.train_flops_per_token(cfg, seq) * n_tok / t.seconds / 1e12
    tflops /= jax.device_count()
    mfu = '-' if peak is None else f'{100 * tflops * 1e12 / peak:.1f}%'
    rows.append(f'| {name} | {1e3 * t.seconds:.1f} | '
                f'{n_tok / t.seconds / jax.device_count():,.0f} | {tflops:.1f} | {mfu} '
                f'| {t.compile_seconds:.1f} | {mem_text} | {t.loss:.3f} |')
    print('   ' + rows[-1], flush=True)

  print(f'\n{_PRESET.value} ({cfg.num_params() / 1e9:.2f}B params), {_DTYPE.value} '
        f'compute, {_PARAM_DTYPE.value} params and AdamW state, on '
        f'{jax.device_count()} x {dev.device_kind}\n')
  print('| batch x seq | step ms | tokens/s/device | TFLOP/s/device | MFU | compile s '
        '| args + temps GiB | loss |')
  print('|---|---|---|---|---|---|---|---|')
  print('\n'.join(rows))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
