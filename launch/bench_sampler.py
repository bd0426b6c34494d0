r"""Sampling speed, every variant side by side in one run; prints a table.

  python -m launch.bench_sampler                       # tiny preset, CPU-sized
  python -m launch.bench_sampler --preset=llada_8b --dtype=bfloat16 \
      --prompt_len=128 --gen_length=256 --block_length=32 --tokens_per_step=8
  python -m launch.bench_sampler --workdir=/tmp/dllm   # a trained checkpoint
  python -m launch.bench_sampler ... --variants=dual_k --profile_dir=/tmp/prof
  python -m launch.profile_summary /tmp/prof/dual_k_b1 --steps=32 --floor_gb=16

Variants: (a) uncached, 1 token/step (the LLaDA reference loop); (b) uncached,
fixed k tokens/step; prefix and dual block KV caches at k tokens/step; (c)
threshold decoding (Fast-dLLM, --threshold) with the dual cache; (d) the
autoregressive twin (same shape, causal) decoding greedily with a KV cache,
the same number of new tokens. Random weights unless --workdir (speed does not
depend on them, but the adaptive rule's tokens/step does: random weights are
never confident, so threshold decoding commits ~1 token/step there). Compile
time is excluded; times are the median of --repeats runs; tokens/step is
new tokens / denoising steps taken; "agree" is the fraction of generated tokens
equal to variant (a)'s.
"""

from absl import app, flags

from launch import cli

_PRESET = flags.DEFINE_string('preset', 'tiny', 'Model preset (random weights).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Use this checkpoint instead.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute and parameter dtype.')
_BATCH = flags.DEFINE_list('batch', ['1'], 'Batch sizes.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Prompt tokens (random ids).')
_PROMPT = flags.DEFINE_string('prompt', None, 'Prompt text instead of random ids '
                              '(with --workdir: its tokenizer; BOS first).')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 64, 'Generated tokens.')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 16, 'Block length.')
_TOKENS_PER_STEP = flags.DEFINE_list('tokens_per_step', ['4'],
                                     'Fixed tokens per step of variant (b) and caches.')
_THRESHOLD = flags.DEFINE_float('threshold', 0.9, 'Threshold of variant (c).')
_VARIANTS = flags.DEFINE_list(
    'variants', ['uncached_1', 'uncached_k', 'prefix_k', 'dual_k', 'dual_threshold',
                 'ar_cached'], 'Variants to run.')
_NOISE = flags.DEFINE_enum('noise', 'counter', ['jax', 'counter'],
                           "Sampler noise ('counter': the fused kernel on GPU).")
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per variant.')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir', None, 'If set, also trace one more run of each variant into '
    'PROFILE_DIR/<variant>_b<batch> (read with `python -m launch.profile_summary '
    'DIR --steps=<the variant\'s steps>`).')


def _model():
  """(config, params, tokenizer or None, name): a checkpoint or random weights."""
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax import models  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  if _WORKDIR.value:
    cfg, params, tokenizer = checkpoint.restore_for_inference(_WORKDIR.value)
    return cfg, params, tokenizer, _WORKDIR.value
  cfg = models.get_preset(_PRESET.value, dtype=_DTYPE.value,
                          param_dtype=_DTYPE.value)
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))
  return cfg, params, None, f'{_PRESET.value} (random weights)'


def _variants() -> dict:
  """{variant: (label, SamplingConfig or None for the AR twin)} of the flags."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  g, bl = _GEN_LENGTH.value, _BLOCK_LENGTH.value
  base = gen.SamplingConfig(steps=g, gen_length=g, block_length=bl, noise=_NOISE.value)
  k = int(_TOKENS_PER_STEP.value[0])
  variants = {
      'uncached_1': ('(a) uncached, 1/step', base),
      'uncached_k': (f'(b) uncached, {k}/step', dataclasses.replace(base, steps=g // k)),
      'prefix_k': (f'prefix cache, {k}/step',
                   dataclasses.replace(base, steps=g // k, cache='prefix')),
      'dual_k': (f'dual cache, {k}/step',
                 dataclasses.replace(base, steps=g // k, cache='dual')),
      'dual_threshold': (f'(c) dual cache, threshold {_THRESHOLD.value}',
                         dataclasses.replace(base, cache='dual', parallel='threshold',
                                             threshold=_THRESHOLD.value)),
      'ar_cached': ('(d) AR twin, KV cache, greedy', None),
  }
  unknown = set(_VARIANTS.value) - set(variants)
  if unknown:
    raise app.UsageError(f'unknown variants {sorted(unknown)}; known: {list(variants)}')
  return variants


def _prompt(b: int, tokenizer):
  """(prompt [b, P], tokenizer): --prompt's ids (byte tokenizer unless the
  checkpoint has one), or random ids."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if _PROMPT.value is None:
    return np.random.default_rng(0).integers(0, 200, (b, _PROMPT_LEN.value)), tokenizer
  if tokenizer is None:
    from dllm_jax.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
    tokenizer = ByteTokenizer()
  return np.tile(tokenizer.encode(_PROMPT.value, add_bos=True), (b, 1)), tokenizer


def _run(sc, params, prompt, cfg):
  """The timed call of one variant: the AR twin's greedy decode, or the sampler."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import autoregressive as ar  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  if sc is None:
    ar_cfg = dataclasses.replace(cfg, causal=True)
    return lambda: ar.greedy(params, prompt, config=ar_cfg,
                             gen_length=_GEN_LENGTH.value).block_until_ready()
  return lambda: jax.block_until_ready(gen.sample(
      params, prompt, jax.random.key(1), config=cfg, sampling=sc))


def _bench_batch(b: int, variants: dict, params, prompt, cfg, dev) -> list[tuple]:
  """A table row per variant at batch size b (after its timed runs, a profile)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from launch import step_timing  # pylint: disable=g-import-not-at-top
  g, rows, reference = _GEN_LENGTH.value, [], None
  for v in _VARIANTS.value:
    label, sc = variants[v]
    run = _run(sc, params, prompt, cfg)
    out, t, compile_s = step_timing.median_time(run, _REPEATS.value)
    if sc is None:
      steps, agree = g, '-'
    else:
      tokens, steps = np.asarray(out.tokens), int(out.nfe)
      if reference is None and v == 'uncached_1':
        reference = tokens
      agree = ('-' if reference is None else
               f'{np.mean(tokens[:, -g:] == reference[:, -g:]):.3f}')
    if _PROFILE_DIR.value:  # After the timed runs: compiled, warm.
      with jax.profiler.trace(f'{_PROFILE_DIR.value}/{v}_b{b}',
                              create_perfetto_trace=True):
        run()
    peak = (dev.memory_stats() or {}).get('peak_bytes_in_use')
    rows.append((b, label, steps, b * g / t, 1e3 * t / steps, g / steps, agree,
                 compile_s, '-' if peak is None else f'{peak / 2**30:.1f}'))
    print(f'  batch {b}, {label}: {rows[-1][3]:,.1f} tokens/s', flush=True)
  return rows


def _print_table(rows: list[tuple], name: str, cfg, dev) -> None:
  prompt_desc = (repr(_PROMPT.value) if _PROMPT.value is not None else
                 f'{_PROMPT_LEN.value} random ids')
  print(f'\n{name}, {cfg.dtype}, prompt {prompt_desc}, gen_length {_GEN_LENGTH.value}, '
        f'block {_BLOCK_LENGTH.value}, noise {_NOISE.value}, on {dev.device_kind}\n')
  print('| batch | variant | steps | tokens/s | ms/step | tokens/step | agree | '
        'compile s | peak GiB |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.1f} | {r[4]:.2f} | {r[5]:.2f} | '
          f'{r[6]} | {r[7]:.1f} | {r[8]} |')


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  cfg, params, tokenizer, name = _model()
  dev = jax.devices()[0]
  print(f'device: {dev.device_kind} ({dev.platform}); {name}; '
        f'{cfg.num_params() / 1e9:.3f}B params', flush=True)
  variants = _variants()
  rows = []
  for b in map(int, _BATCH.value):
    prompt, tokenizer = _prompt(b, tokenizer)
    rows += _bench_batch(b, variants, params, prompt, cfg, dev)
  _print_table(rows, name, cfg, dev)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
