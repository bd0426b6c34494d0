r"""Mixture-of-experts numbers in one command: train-step MFU on active
parameters, sampler tokens/s, grouped matmul vs the dense reference.

  python -m launch.bench_moe                                # llada2_tiny, CPU-sized
  python -m launch.bench_moe --preset=llada2_mini --dtype=bfloat16 \
      --param_dtype=bfloat16 --batch=8 --seq_len=2048 --sample_batch=1,32 \
      --gen_length=256 --block_length=32 --moe_tokens=4096

Random weights and tokens. Train: the pretraining step (AdamW), compiled ahead
of time, --steps timed after --warmup; MFU counts the active parameters only
(`config.forward_flops_per_token`). Sampler: `generate` with --tokens_per_step
tokens committed per step (steps = gen_length / tokens_per_step), --cache, per
batch size; tokens/s = batch x gen_length / seconds (second call, compiled).
MoE layer: one layer's routed experts on --moe_tokens tokens, `grouped_ffn`
(sort + ragged_dot) against `dense_reference` (every expert on every token).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from dllm_jax import models
from dllm_jax.models import moe
from dllm_jax.sampling import generate as gen
from dllm_jax.training import flops
from launch import step_timing

_PRESET = flags.DEFINE_string('preset', 'llada2_tiny', 'An MoE preset.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
_PARAM_DTYPE = flags.DEFINE_string('param_dtype', 'float32', 'Parameter dtype.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Train batch size.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 64, 'Train sequence length.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed train steps.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.')
_SAMPLE_BATCH = flags.DEFINE_list('sample_batch', ['1', '4'], 'Sampler batch sizes.')
_PROMPT = flags.DEFINE_integer('prompt_length', 16, 'Sampler prompt length.')
_GEN = flags.DEFINE_integer('gen_length', 16, 'Tokens generated.')
_BLOCK = flags.DEFINE_integer('block_length', 8, 'Sampler block length.')
_PER_STEP = flags.DEFINE_integer('tokens_per_step', 8, 'Tokens committed per step.')
_CACHE = flags.DEFINE_string('cache', 'dual', 'Sampler KV cache: none|prefix|dual.')
_MOE_TOKENS = flags.DEFINE_integer('moe_tokens', 256, 'Tokens of the MoE-layer row.')
_SKIP = flags.DEFINE_list('skip', [], 'Parts to skip: train, sample, moe.')


def _time(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / repeats


def bench_train(cfg) -> None:
  b, l = _BATCH.value, _SEQ_LEN.value
  timing = step_timing.time_train_step(cfg, b, l, steps=_STEPS.value,
                                       warmup=_WARMUP.value)
  flop = flops.train_flops_per_token(cfg, l) * b * l
  peak = flops.peak_flops(jax.devices()[0].device_kind)
  mfu = f'{100 * flop / timing.seconds / peak:.1f}%' if peak else 'n/a (unknown peak)'
  print(f'train  {b} x {l}: {timing.seconds * 1e3:.1f} ms/step, '
        f'{b * l / timing.seconds:,.0f} tokens/s, {flop / timing.seconds / 1e12:.3g} '
        f'TFLOP/s, MFU on active parameters {mfu} (loss {timing.loss:.3f})', flush=True)


def bench_sample(cfg, params) -> None:
  gen_len = _GEN.value
  sampling = gen.SamplingConfig(steps=gen_len // _PER_STEP.value, gen_length=gen_len,
                                block_length=_BLOCK.value, cache=_CACHE.value)
  for b in (int(x) for x in _SAMPLE_BATCH.value):
    prompt = jax.random.randint(jax.random.key(3), (b, _PROMPT.value), 0, 250)
    run = lambda p: gen.generate(params, p, jax.random.key(0), config=cfg,
                                 sampling=sampling)
    seconds = _time(run, prompt, repeats=2)
    print(f'sample batch {b}: {b * gen_len / seconds:,.1f} tokens/s '
          f'({_PER_STEP.value} tokens/step, cache {_CACHE.value}, '
          f'{seconds * 1e3:.0f} ms per call)', flush=True)


def bench_moe_layer(cfg) -> None:
  n, d, e, i = _MOE_TOKENS.value, cfg.d_model, cfg.n_experts, cfg.moe_d_ff
  keys = jax.random.split(jax.random.key(4), 4)
  dt = jnp.dtype(cfg.dtype)
  x = jax.random.normal(keys[0], (n, d), dt)
  gate_up = (0.02 * jax.random.normal(keys[1], (e, d, 2, i))).astype(dt)
  down = (0.02 * jax.random.normal(keys[2], (e, i, d))).astype(dt)
  idx, w, _ = moe.route(jax.random.normal(keys[3], (n, e)), router=cfg.router,
                        top_k=cfg.top_k, n_group=cfg.n_group, topk_group=cfg.topk_group)
  grouped = jax.jit(moe.grouped_ffn)
  dense = jax.jit(moe.dense_reference)
  t_g, t_d = _time(grouped, x, idx, w, gate_up, down), _time(dense, x, idx, w, gate_up, down)
  err = float(jnp.max(jnp.abs(grouped(x, idx, w, gate_up, down) -
                              dense(x, idx, w, gate_up, down))))
  useful = 6 * n * cfg.top_k * d * i
  print(f'moe layer {n} tokens, {e} experts, top {cfg.top_k}: grouped '
        f'{t_g * 1e3:.2f} ms ({useful / t_g / 1e12:.3g} TFLOP/s useful), dense '
        f'reference {t_d * 1e3:.2f} ms: {t_d / t_g:.1f}x; max difference {err:.2e}',
        flush=True)


def main(argv):
  del argv
  cfg = models.get_preset(_PRESET.value, dtype=_DTYPE.value,
                          param_dtype=_PARAM_DTYPE.value)
  print(f'{_PRESET.value}: {cfg.num_params() / 1e6:,.2f}M parameters, '
        f'{cfg.num_active_params() / 1e6:,.2f}M active; {jax.devices()[0].device_kind}',
        flush=True)
  if 'train' not in _SKIP.value:
    bench_train(cfg)
  if 'sample' not in _SKIP.value:
    params = jax.jit(lambda k: models.init_params(cfg, k))(jax.random.key(0))
    bench_sample(cfg, params)
    del params
  if 'moe' not in _SKIP.value:
    bench_moe_layer(cfg)


if __name__ == '__main__':
  app.run(main)
