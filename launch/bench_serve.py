r"""Server throughput beside the engine's own, in one run; prints a table.

  python -m launch.bench_serve --workdir=/tmp/dllm
  python -m launch.bench_serve --workdir=/tmp/dllm --gen_length=64 --steps=16 \
      --clients=1,32 --requests=96

The `Engine` in this process runs `--requests` requests as batches of 1 and of
32; `launch.serve` in a subprocess on 127.0.0.1 (the same settings as its
defaults) answers the same number from 1 and from 32 concurrent HTTP clients,
each sending its next request when the last is answered. Compilation is
excluded (a warm-up round first); engine and server runs alternate, each row
keeps the best of `--repeats` (other load on a shared machine only slows a
run). Every request has the same prompt and settings, and its own seed.
tokens/s counts generated tokens (gen_length per request).
"""

import time

from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.',
                               required=True)
_CLIENTS = flags.DEFINE_list('clients', ['1', '32'], 'Concurrent clients / batch sizes.')
_REQUESTS = flags.DEFINE_integer('requests', 128, 'Timed requests per row.')
_PROMPT = flags.DEFINE_string('prompt', 'The quick brown fox ', 'Prompt text.')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 32, 'Generated tokens per request.')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 16, 'Block length.')
_STEPS = flags.DEFINE_integer('steps', 16, 'Denoising steps.')
_WINDOW_MS = flags.DEFINE_float('batch_window_ms', 20.0, 'Server batch window.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs of each row (best kept).')


def _engine_run(engine, sampling, b):
  """Seconds for --requests requests as batches of b."""
  from dllm_jax.serving import Request  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  for start in range(0, _REQUESTS.value, b):
    engine.generate([Request(_PROMPT.value, sampling, seed=start + i) for i in range(b)])
  return time.perf_counter() - t0


def _server_run(url, c):
  """(seconds, mean batch size: rows per block call) for --requests requests
  from c concurrent clients (asyncio tasks on one connection pool: light on
  the client side)."""
  import asyncio  # pylint: disable=g-import-not-at-top
  import httpx  # pylint: disable=g-import-not-at-top

  def counts():
    h = httpx.get(url + '/health').json()
    return h['row_blocks'], h['block_calls']

  async def run():
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
      async def client(seeds):
        for s in seeds:
          r = await http.post(url + '/v1/completions',
                              json={'prompt': _PROMPT.value, 'seed': s})
          r.raise_for_status()
      seeds = list(range(_REQUESTS.value))
      await asyncio.gather(*(client(seeds[i::c]) for i in range(c)))

  rows0, calls0 = counts()
  t0 = time.perf_counter()
  asyncio.run(run())
  dt = time.perf_counter() - t0
  rows, calls = counts()
  return dt, (rows - rows0) / max(1, calls - calls0)


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax import SamplingConfig  # pylint: disable=g-import-not-at-top
  sizes = sorted(int(c) for c in _CLIENTS.value)
  sampling = SamplingConfig(steps=_STEPS.value, gen_length=_GEN_LENGTH.value,
                            block_length=_BLOCK_LENGTH.value)
  from dllm_jax.serving import Engine  # pylint: disable=g-import-not-at-top
  from launch import serve_process  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    engine = Engine.from_workdir(_WORKDIR.value, batch_sizes=sizes)
  proc, url = serve_process.start([
      f'--workdir={_WORKDIR.value}', f'--max_batch={max(sizes)}',
      f'--warmup={len(_PROMPT.value) + 1}', f'--gen_length={_GEN_LENGTH.value}',
      f'--steps={_STEPS.value}', f'--block_length={_BLOCK_LENGTH.value}',
      '--temperature=0', f'--batch_window_ms={_WINDOW_MS.value}',
      f'--max_tokens={_GEN_LENGTH.value}',
      f'--max_queue={_REQUESTS.value + max(sizes)}'], timeout_s=1800)
  tokens = _REQUESTS.value * _GEN_LENGTH.value
  best = {}
  try:
    for c in sizes:  # Warm both (compile), then alternate timed runs.
      _engine_run(engine, sampling, c)
      _server_run(url, c)
    for r in range(_REPEATS.value):
      for c in sizes:
        rate = tokens / _engine_run(engine, sampling, c)
        best['engine', c] = max(best.get(('engine', c), 0.0), rate)
        dt, mean_batch = _server_run(url, c)
        best['server', c] = max(best.get(('server', c), 0.0), tokens / dt)
        best['batch', c] = max(best.get(('batch', c), 0.0), mean_batch)
        print(f'  run {r}, {c}: engine {rate:,.1f}, server {tokens / dt:,.1f} '
              f'tokens/s (mean server batch {mean_batch:.1f})', flush=True)
  finally:
    proc.terminate()
    proc.wait(120)
  dev = jax.devices()[0]
  print(f'\n{_WORKDIR.value}, prompt {len(_PROMPT.value) + 1} tokens, gen_length '
        f'{_GEN_LENGTH.value}, block {_BLOCK_LENGTH.value}, {_STEPS.value} steps, '
        f'{_REQUESTS.value} requests per row, on {dev.device_kind}\n')
  print('| clients / batch | engine tokens/s | server tokens/s | server / engine | '
        'mean server batch |')
  print('|---|---|---|---|---|')
  for c in sizes:
    e, s = best['engine', c], best['server', c]
    print(f'| {c} | {e:,.1f} | {s:,.1f} | {s / e:.0%} | {best["batch", c]:.1f} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
