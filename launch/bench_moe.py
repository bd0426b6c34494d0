r"""Mixture-of-experts speed: the routed experts' grouped-matmul paths
(models/grouped_matmul.py) per layer and end to end, train-step MFU, sampler.

  python -m launch.bench_moe                        # layer + block tables, CPU-sized
  python -m launch.bench_moe --parts=block --block_batch=1,8 --gen_length=256
  python -m launch.bench_moe --parts=train --preset=llada2_tiny --impls=ragged,capacity

Random weights. --preset is a family preset or `llada2_33m`, this file's
LLaDA2-shaped CPU model (hidden 512, 4 layers, 16 experts top-4 + 1 shared,
vocab 8,192, 33.6M parameters, 19.4M active). --parts, any of:

- layer: one MoE layer's routed experts on --layer_rows rows (decode: batch x
  block; training: batch x length) by every path, against a dense SwiGLU with
  the same ACTIVE parameters (width top_k x moe_d_ff) on the same rows; with
  --bandwidth (bytes/s) also the weight-streaming floor: the bytes of the
  experts the rows chose, read once.
- block: the exact-cache block sampler (threshold --threshold, greedy, prompt
  --prompt_length, --gen_length, --block_length; EOS never ends a row) per
  batch in --block_batch and path in --impls, timed side by side (each repeat
  runs every path in turn), tokens compared with the first path's; then each
  path's speed-up over the first and its batch scaling.
- train: the pretraining step (AdamW) per path; MFU on active parameters.
- sample: `generate` (--cache, --tokens_per_step) per batch in --sample_batch.

--impls: `moe_impl` values ('auto' is the dispatcher's choice for the backend:
capacity on CPU, ragged on GPU/TPU). GPU (llada2_mini at bfloat16):

  python -m launch.bench_moe --preset=llada2_mini --dtype=bfloat16 \
      --param_dtype=bfloat16 --layer_rows=32,1024,16384 --bandwidth=3.0e12 \
      --parts=layer,block --impls=ragged,capacity --block_batch=1,32 \
      --prompt_length=128 --gen_length=256
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dllm_jax import models
from dllm_jax.models import grouped_matmul as gm
from dllm_jax.models import moe
from dllm_jax.sampling import block
from dllm_jax.sampling import generate as gen
from dllm_jax.training import flops
from launch import step_timing

_PRESET = flags.DEFINE_string('preset', 'llada2_33m', 'An MoE preset or llada2_33m.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
_PARAM_DTYPE = flags.DEFINE_string('param_dtype', 'float32', 'Parameter dtype.')
_PARTS = flags.DEFINE_list('parts', ['layer', 'block'],
                           'What to time: layer, block, train, sample.')
_IMPLS = flags.DEFINE_list('impls', ['ragged', 'auto'],
                           'moe_impl paths for block, train, sample (first: baseline).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (median, or best for layer).')
_LAYER_ROWS = flags.DEFINE_list('layer_rows', ['32', '256', '1024'],
                                'Rows of the MoE-layer table.')
_BANDWIDTH = flags.DEFINE_float('bandwidth', 0.0, 'Bytes/s of the weight floor (0: none).')
_BLOCK_BATCH = flags.DEFINE_list('block_batch', ['1'], 'Block sampler batch sizes.')
_PROMPT = flags.DEFINE_integer('prompt_length', 64, 'Sampler prompt length.')
_GEN = flags.DEFINE_integer('gen_length', 64, 'Tokens generated.')
_BLOCK = flags.DEFINE_integer('block_length', 32, 'Sampler block length.')
_THRESHOLD = flags.DEFINE_float('threshold', 0.95, 'Block sampler threshold.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Train batch size.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 64, 'Train sequence length.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed train steps.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.')
_SAMPLE_BATCH = flags.DEFINE_list('sample_batch', ['1', '4'], 'generate batch sizes.')
_PER_STEP = flags.DEFINE_integer('tokens_per_step', 8, 'generate: tokens per step.')
_CACHE = flags.DEFINE_string('cache', 'dual', 'generate KV cache: none|prefix|dual.')

SHAPES = {  # Bench-only models: (family preset, overrides).
    'llada2_33m': ('llada2_tiny', dict(
        vocab_size=8192, d_model=512, n_layers=4, n_heads=8, n_kv_heads=4,
        head_dim=64, d_ff=1280, n_experts=16, top_k=4, moe_d_ff=256, shared_d_ff=256,
        first_k_dense=1, n_group=4, topk_group=2, max_len=2048)),
}


def get_config(name: str, **overrides):
  """A preset, or a `SHAPES` model, with overrides."""
  if name in SHAPES:
    base, shape = SHAPES[name]
    return models.get_preset(base, **{**shape, **overrides})
  return models.get_preset(name, **overrides)


def _best_time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def bench_layer(cfg) -> None:
  d, e, k, i = cfg.d_model, cfg.n_experts, cfg.top_k, cfg.moe_d_ff
  dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
  keys = jax.random.split(jax.random.key(4), 6)
  gate_up = (0.02 * jax.random.normal(keys[1], (e, d, 2, i))).astype(pdt)
  down = (0.02 * jax.random.normal(keys[2], (e, i, d))).astype(pdt)
  a_gu = (0.02 * jax.random.normal(keys[4], (d, 2 * k * i))).astype(pdt)
  a_dn = (0.02 * jax.random.normal(keys[5], (k * i, d))).astype(pdt)

  def active_dense(x, a_gu, a_dn):  # SwiGLU of width k * i: the active parameters.
    h = x @ a_gu.astype(x.dtype)
    return (jax.nn.silu(h[:, :k * i]) * h[:, k * i:]) @ a_dn.astype(x.dtype)

  paths = {p: jax.jit(f) for p, f in gm.PATHS.items()}
  dense_jit = jax.jit(active_dense)
  rows_out = []
  for n in map(int, _LAYER_ROWS.value):
    x = jax.random.normal(keys[0], (n, d), dt)
    idx, w, _ = moe.route(jax.random.normal(keys[3], (n, e)), router=cfg.router,
                          top_k=k, n_group=cfg.n_group, topk_group=cfg.topk_group)
    args = (x, idx, w, gate_up, down)
    # The dense path's [E, N, D] float32 output past 4 GiB: skipped, capacity the reference.
    run = {p: f for p, f in paths.items() if p != 'dense' or n * e * d * 4 <= 2**32}
    ref = run['dense' if 'dense' in run else 'capacity'](*args)
    times = {p: [] for p in run}
    times['active dense'] = []
    for _ in range(_REPEATS.value):  # Side by side: every path in each repeat.
      for p, f in run.items():
        times[p].append(_best_time(f, *args, repeats=3))
      times['active dense'].append(_best_time(dense_jit, x, a_gu, a_dn, repeats=3))
    base = min(times['active dense'])
    used = len(np.unique(np.asarray(idx)))
    floor = (3 * used * d * i * pdt.itemsize / _BANDWIDTH.value
             if _BANDWIDTH.value else None)
    for p, ts in times.items():
      err = 0.0 if p == 'active dense' else float(jnp.max(jnp.abs(run[p](*args) - ref)))
      rows_out.append((n, used, p, min(ts), min(ts) / base, err,
                       None if floor is None else min(ts) / floor))
    print(f'  {n} rows done', flush=True)
  print(f'\nMoE layer (routed experts: {e} experts, top {k}, D {d}, I {i}, '
        f'{cfg.dtype}), best of {_REPEATS.value} x 3 calls, on '
        f'{jax.devices()[0].device_kind}; "active dense": a SwiGLU of width '
        f'{k} x {i} on the same rows\n')
  floor_head = ' x weight floor |' if _BANDWIDTH.value else ''
  print(f'| rows | experts used | path | ms | x active dense | max diff |{floor_head}')
  print('|---|---|---|---|---|---|' + ('---|' if _BANDWIDTH.value else ''))
  for n, used, p, t, ratio, err, fl in rows_out:
    extra = f' {fl:.2f} |' if fl is not None else ''
    print(f'| {n} | {used} | {p} | {t * 1e3:.3f} | {ratio:.2f} | {err:.1e} |{extra}')


def bench_block(cfg, params) -> None:
  sc = block.BlockSamplingConfig(gen_length=_GEN.value, block_length=_BLOCK.value,
                                 steps=_BLOCK.value, parallel='threshold',
                                 threshold=_THRESHOLD.value)
  impls = _IMPLS.value
  cfgs = {p: dataclasses.replace(cfg, moe_impl=p) for p in impls}
  results = {}
  for b in map(int, _BLOCK_BATCH.value):
    prompt = np.random.default_rng(0).integers(0, 200, (b, _PROMPT.value))
    runs = {p: (lambda c=c: jax.block_until_ready(block.generate(
        params, prompt, jax.random.key(1), config=c, sampling=sc))) for p, c in cfgs.items()}
    outs = {p: run() for p, run in runs.items()}  # Compile.
    times = {p: [] for p in impls}
    for _ in range(_REPEATS.value):  # Side by side: every path in each repeat.
      for p, run in runs.items():
        t0 = time.perf_counter()
        outs[p] = run()
        times[p].append(time.perf_counter() - t0)
    first = np.asarray(outs[impls[0]].tokens)
    for p in impls:
      t = float(np.median(times[p]))
      nfe = int(outs[p].nfe)
      same = bool(np.array_equal(np.asarray(outs[p].tokens), first))
      results[b, p] = (b * _GEN.value / t, nfe, 1e3 * t / nfe, same)
      print(f'  batch {b}, {p}: {results[b, p][0]:,.1f} tokens/s', flush=True)
  batches = list(map(int, _BLOCK_BATCH.value))
  print(f'\nexact-cache block sampler, {_PRESET.value} ({cfg.num_params() / 1e6:.1f}M '
        f'parameters, {cfg.dtype}), prompt {_PROMPT.value}, gen {_GEN.value}, block '
        f'{_BLOCK.value}, threshold {_THRESHOLD.value}, greedy, median of '
        f'{_REPEATS.value} side by side, on {jax.devices()[0].device_kind}\n')
  print(f'| batch | moe_impl | tokens/s | forwards | ms/forward | x {impls[0]} | '
        f'x batch {batches[0]} | tokens = {impls[0]} |')
  print('|---|---|---|---|---|---|---|---|')
  for b in batches:
    for p in impls:
      tps, nfe, ms, same = results[b, p]
      print(f'| {b} | {p} | {tps:,.1f} | {nfe} | {ms:.1f} | '
            f'{tps / results[b, impls[0]][0]:.2f} | '
            f'{tps / results[batches[0], p][0]:.2f} | {"yes" if same else "NO"} |')


def bench_train(cfg) -> None:
  b, l = _BATCH.value, _SEQ_LEN.value
  flop = flops.train_flops_per_token(cfg, l) * b * l
  peak = flops.peak_flops(jax.devices()[0].device_kind)
  fastest = {}
  for p in _IMPLS.value:  # Repeat a path in --impls to interleave the runs.
    timing = step_timing.time_train_step(dataclasses.replace(cfg, moe_impl=p), b, l,
                                         steps=_STEPS.value, warmup=_WARMUP.value,
                                         each_step=True, log=lambda _: None)
    t = min(timing.step_seconds)
    fastest[p] = min(fastest.get(p, t), t)
    mfu = f'{100 * flop / t / peak:.1f}%' if peak else 'n/a (unknown peak)'
    print(f'train {p} {b} x {l}: fastest step {t * 1e3:.1f} ms (mean '
          f'{timing.seconds * 1e3:.1f}), {b * l / t:,.0f} tokens/s, MFU on active '
          f'parameters {mfu} (loss {timing.loss:.4f})', flush=True)
  first = _IMPLS.value[0]
  print(f'\ntrain step, {_PRESET.value}, {b} x {l}, fastest of {_STEPS.value} steps '
        f'(each run), on {jax.devices()[0].device_kind}\n')
  print(f'| moe_impl | fastest step ms | speed-up over {first} |\n|---|---|---|')
  for p, t in fastest.items():
    print(f'| {p} | {t * 1e3:.1f} | {fastest[first] / t:.2f} |')


def bench_sample(cfg, params) -> None:
  gen_len = _GEN.value
  sampling = gen.SamplingConfig(steps=gen_len // _PER_STEP.value, gen_length=gen_len,
                                block_length=_BLOCK.value, cache=_CACHE.value)
  for b in (int(x) for x in _SAMPLE_BATCH.value):
    prompt = jax.random.randint(jax.random.key(3), (b, _PROMPT.value), 0, 250)
    for p in _IMPLS.value:
      c = dataclasses.replace(cfg, moe_impl=p)
      run = lambda c=c: jax.block_until_ready(gen.generate(
          params, prompt, jax.random.key(0), config=c, sampling=sampling))
      _, seconds, _ = step_timing.median_time(run, _REPEATS.value)
      print(f'sample {p} batch {b}: {b * gen_len / seconds:,.1f} tokens/s '
            f'({_PER_STEP.value} tokens/step, cache {_CACHE.value}, '
            f'{seconds * 1e3:.0f} ms per call)', flush=True)


def main(argv):
  del argv
  unknown = set(_PARTS.value) - {'layer', 'block', 'train', 'sample'}
  if unknown:
    raise app.UsageError(f'--parts: unknown {sorted(unknown)}; choose from layer, '
                         'block, train, sample.')
  cfg = get_config(_PRESET.value, dtype=_DTYPE.value, param_dtype=_PARAM_DTYPE.value)
  for p in _IMPLS.value:
    gm.choose_impl(p)  # One-line error for an unknown path.
  print(f'{_PRESET.value}: {cfg.num_params() / 1e6:,.2f}M parameters, '
        f'{cfg.num_active_params() / 1e6:,.2f}M active; {jax.devices()[0].device_kind}; '
        f"moe_impl 'auto' is {gm.choose_impl('auto')!r} here", flush=True)
  if 'layer' in _PARTS.value:
    bench_layer(cfg)
  if 'train' in _PARTS.value:
    bench_train(cfg)
  if {'block', 'sample'} & set(_PARTS.value):
    # EOS never ends a row: every row generates gen_length tokens.
    cfg = dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, eos=cfg.ids.pad))
    params = jax.jit(lambda k: models.init_params(cfg, k))(jax.random.key(0))
    if 'block' in _PARTS.value:
      bench_block(cfg, params)
    if 'sample' in _PARTS.value:
      bench_sample(cfg, params)


if __name__ == '__main__':
  app.run(main)
