r"""Block diffusion speed: the block sampler's variants, and tile-skipping attention.

  python -m launch.bench_block                          # tiny preset, CPU-sized
  python -m launch.bench_block --preset=llada_8b --dtype=bfloat16 --batch=1,32 \
      --prompt_len=128 --gen_length=256 --block_length=32 --tokens_per_step=8
  python -m launch.bench_block --what=attention --seq_len=512,1024

--what=sampler (random weights; EOS never ends a row, so every row generates
gen_length tokens): (a) no cache (each step recomputes the canvas); (b) the
exact block cache with a separate forward writing each finished block; (c) the
same with that write fused into the next block's first step; (d) (b) with the
threshold rule. tokens/s = batch * gen_length / median time; "agree" is the
fraction of tokens equal to (a)'s. Issue targets (one H100, llada_8b, bf16,
prompt 128, gen 256, block 32, 8 tokens/step): batch 1 >= 1,300 tokens/s, batch
32 >= 6,000 tokens/s.

--what=attention: forward + backward of the [x_t, x_0] attention (2L tokens)
with a dense masked `jax.nn.dot_product_attention` vs `block_sparse.attend_tiles`
over the tiles the mask allows; "tiles" is the fraction computed.

--what=train: one whole train step (objective block_diffusion, AdamW) with
train.block.skip_tiles off and on, per row length L (--seq_len, --batch[0]):

  python -m launch.bench_block --what=train --seq_len=256,512 --block_length=32 \
      --batch=8
"""

import dataclasses

from absl import app, flags

from launch import cli

_WHAT = flags.DEFINE_enum('what', 'sampler', ['sampler', 'attention', 'train'],
                          'What to time.')
_PRESET = flags.DEFINE_string('preset', 'tiny', 'Model preset (random weights).')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute and parameter dtype.')
_BATCH = flags.DEFINE_list('batch', ['1'], 'Batch sizes.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Prompt tokens (random ids).')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 64, 'Generated tokens.')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 16, 'Block length.')
_TOKENS_PER_STEP = flags.DEFINE_integer('tokens_per_step', 4, 'Fixed tokens per step.')
_THRESHOLD = flags.DEFINE_float('threshold', 0.9, 'Threshold of variant (d).')
_VARIANTS = flags.DEFINE_list('variants', ['uncached', 'cached', 'fused', 'threshold'],
                              'Sampler variants.')
_SEQ_LEN = flags.DEFINE_list('seq_len', ['256', '512'], 'Row lengths L (attention).')
_TILE = flags.DEFINE_integer('tile', 0, 'Tile length (0: the block length).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per variant.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed train steps (--what=train).')


def _median_time(run):
  from launch import step_timing  # pylint: disable=g-import-not-at-top
  return step_timing.median_time(run, _REPEATS.value)


def bench_sampler():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax import models  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
  cfg = models.get_preset(_PRESET.value, dtype=_DTYPE.value, param_dtype=_DTYPE.value)
  cfg = dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, eos=cfg.ids.pad))
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))
  dev = jax.devices()[0]
  g, bl, k = _GEN_LENGTH.value, _BLOCK_LENGTH.value, _TOKENS_PER_STEP.value
  base = block.BlockSamplingConfig(gen_length=g, block_length=bl, steps=bl // k,
                                   parallel='fixed')
  variants = {
      'uncached': (f'(a) no cache, {k}/step', dataclasses.replace(base, cache=False)),
      'cached': (f'(b) exact cache, {k}/step', base),
      'fused': (f'(c) exact cache, fused write, {k}/step',
                dataclasses.replace(base, fuse_write=True)),
      'threshold': (f'(d) exact cache, threshold {_THRESHOLD.value}',
                    dataclasses.replace(base, parallel='threshold', steps=bl,
                                        threshold=_THRESHOLD.value)),
  }
  print(f'device: {dev.device_kind}; {_PRESET.value} (random weights), '
        f'{cfg.num_params() / 1e9:.3f}B params, {cfg.dtype}', flush=True)
  rows = []
  for b in map(int, _BATCH.value):
    prompt = np.random.default_rng(0).integers(0, 200, (b, _PROMPT_LEN.value))
    reference = None
    for v in _VARIANTS.value:
      label, sc = variants[v]
      out, t, compile_s = _median_time(lambda sc=sc: jax.block_until_ready(
          block.generate(params, prompt, jax.random.key(1), config=cfg, sampling=sc)))
      # Every forward (the cache prefill and block writes included) divides
      # the time; the decision forwards are the reference's count per row.
      tokens, forwards = np.asarray(out.tokens), int(out.forwards)
      decisions = int(np.max(out.decisions))
      reference = tokens if reference is None else reference
      rows.append((b, label, f'{decisions} / {forwards}', b * g / t, 1e3 * t / forwards,
                   f'{np.mean(tokens == reference):.3f}', compile_s))
      print(f'  batch {b}, {label}: {rows[-1][3]:,.1f} tokens/s', flush=True)
  print(f'\n{_PRESET.value}, {cfg.dtype}, prompt {_PROMPT_LEN.value}, gen_length {g}, '
        f'block {bl}, on {dev.device_kind}\n')
  print('| batch | variant | forwards (decisions / all) | tokens/s | ms/forward | agree '
        '| compile s |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.1f} | {r[4]:.2f} | {r[5]} | '
          f'{r[6]:.1f} |')


def bench_attention():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.kernels import block_sparse  # pylint: disable=g-import-not-at-top
  from dllm_jax.objectives import block as bd  # pylint: disable=g-import-not-at-top
  bl = _BLOCK_LENGTH.value
  tile = _TILE.value or bl
  b, h, d = int(_BATCH.value[0]), 4, 32
  rows = []
  for l in map(int, _SEQ_LEN.value):
    pos = jnp.broadcast_to(jnp.arange(l), (b, l))
    mask = bd.block_mask(pos, bl)
    pairs = block_sparse.tile_pairs(l, bl, tile)
    q, k, v = (jax.random.normal(jax.random.key(i), (b, 2 * l, h, d)) for i in range(3))
    dense = jax.jit(jax.grad(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, mask=mask).sum(), argnums=(0, 1, 2)))
    tiled = jax.jit(jax.grad(lambda q, k, v: block_sparse.attend_tiles(
        q, k, v, mask, pairs, tile).sum(), argnums=(0, 1, 2)))
    gd, td, _ = _median_time(lambda: jax.block_until_ready(dense(q, k, v)))
    gt, tt, _ = _median_time(lambda: jax.block_until_ready(tiled(q, k, v)))
    err = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(gd, gt))
    frac = len(pairs) / (2 * l // tile) ** 2
    rows.append((l, frac, 1e3 * td, 1e3 * tt, td / tt, err))
  print(f'\n[x_t, x_0] attention, forward + backward, batch {b}, {h} heads x {d}, '
        f'block {bl}, tile {tile}, on {jax.devices()[0].device_kind}\n')
  print('| L | tiles computed | dense ms | tiled ms | speed-up | max grad diff |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r[0]} | {r[1]:.3f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f}x | {r[5]:.1e} |')


def bench_train():
  from dllm_jax import models  # pylint: disable=g-import-not-at-top
  from dllm_jax.kernels import block_sparse  # pylint: disable=g-import-not-at-top
  from dllm_jax.objectives import block as bd  # pylint: disable=g-import-not-at-top
  from launch import step_timing  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  bl, b = _BLOCK_LENGTH.value, int(_BATCH.value[0])
  gib = lambda t: ('-' if t.memory is None else
                   f'{t.memory.temp_size_in_bytes / 2**30:.2f}')
  rows = []
  for l in map(int, _SEQ_LEN.value):
    cfg = models.get_preset(_PRESET.value, dtype=_DTYPE.value, param_dtype=_DTYPE.value,
                            max_len=max(l, 64))
    runs = []
    for skip in (False, True):
      opts = bd.BlockDiffusionOptions(block_size=bl, skip_tiles=skip)
      t = step_timing.time_train_step(cfg, b, l, steps=_STEPS.value, warmup=1,
                                      objective='block_diffusion', block_options=opts,
                                      each_step=True, log=lambda _: None)
      runs.append((min(t.step_seconds), gib(t)))
      print(f'  L {l}, skip_tiles={skip}: fastest step {1e3 * runs[-1][0]:.0f} ms '
            f'(mean {1e3 * t.seconds:.0f}), loss {t.loss:.4f}', flush=True)
    frac = len(block_sparse.TileLayout(l, (bl,), bl).pairs()) / (2 * l // bl) ** 2
    rows.append((l, frac, runs[0], runs[1], runs[0][0] / runs[1][0]))
  print(f'\nblock-diffusion train step (forward, backward, AdamW), {_PRESET.value} '
        f'{_DTYPE.value}, batch {b}, block {bl} (tile {bl}), fastest of '
        f'{_STEPS.value} steps, on {jax.devices()[0].device_kind}\n')
  print('| L (input 2L) | tiles computed | dense mask ms | skip_tiles ms | speed-up '
        '| temp GiB dense / skip |')
  print('|---|---|---|---|---|---|')
  for l, frac, dense, tiled, speedup in rows:
    print(f'| {l} | {frac:.3f} | {1e3 * dense[0]:.0f} | {1e3 * tiled[0]:.0f} | '
          f'{speedup:.2f}x | {dense[1]} / {tiled[1]} |')


def main(argv):
  cli.start(argv)
  if _WHAT.value == 'attention':
    bench_attention()
  elif _WHAT.value == 'train':
    bench_train()
  else:
    bench_sampler()


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
