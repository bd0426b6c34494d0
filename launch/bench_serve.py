r"""Server throughput beside the engine's own, in one run; prints a table.

  python -m launch.bench_serve --workdir=/tmp/dllm
  python -m launch.bench_serve --workdir=/tmp/dllm --gen_length=64 --steps=16 \
      --clients=1,32 --requests=96

First the `Engine` in this process: `--requests` requests as batches of 1 and
of 32 (compile excluded). Then `launch.serve` in a subprocess on 127.0.0.1,
driven by 1 and by 32 concurrent HTTP clients, each sending its next request
when the last is answered, the same `--requests` in all (warm-up excluded).
Every request has the same settings and a prompt of the same length, its own
seed. tokens/s counts generated tokens (gen_length per request).
"""

import concurrent.futures
import time

from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.',
                               required=True)
_CLIENTS = flags.DEFINE_list('clients', ['1', '32'], 'Concurrent clients / batch sizes.')
_REQUESTS = flags.DEFINE_integer('requests', 64, 'Timed requests per row.')
_PROMPT = flags.DEFINE_string('prompt', 'The quick brown fox ', 'Prompt text.')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 32, 'Generated tokens per request.')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 16, 'Block length.')
_STEPS = flags.DEFINE_integer('steps', 16, 'Denoising steps.')
_WINDOW_MS = flags.DEFINE_float('batch_window_ms', 10.0, 'Server batch window.')


def _engine_rows(sampling, sizes):
  from dllm_jax.serving import Engine, Request  # pylint: disable=g-import-not-at-top
  engine = Engine.from_workdir(_WORKDIR.value, batch_sizes=sizes)
  rows = []
  for b in sizes:
    reqs = [Request(_PROMPT.value, sampling, seed=i) for i in range(b)]
    engine.generate(reqs)  # Compile.
    t0 = time.perf_counter()
    for start in range(0, _REQUESTS.value, b):
      engine.generate([Request(_PROMPT.value, sampling, seed=start + i)
                       for i in range(b)])
    rows.append((f'engine, batch {b}', _REQUESTS.value * sampling.gen_length
                 / (time.perf_counter() - t0)))
    print(f'  {rows[-1][0]}: {rows[-1][1]:,.1f} tokens/s', flush=True)
  return rows


def _server_rows(sizes):
  import httpx  # pylint: disable=g-import-not-at-top
  from launch import serve_process  # pylint: disable=g-import-not-at-top
  prompt_len = len(_PROMPT.value) + 1
  proc, url = serve_process.start([
      f'--workdir={_WORKDIR.value}', f'--max_batch={max(sizes)}',
      f'--batch_sizes={",".join(map(str, sizes))}', f'--warmup={prompt_len}',
      f'--batch_window_ms={_WINDOW_MS.value}', f'--max_tokens={_GEN_LENGTH.value}',
      f'--max_queue={_REQUESTS.value + max(sizes)}'], timeout_s=900)
  body = dict(prompt=_PROMPT.value, max_tokens=_GEN_LENGTH.value, steps=_STEPS.value,
              block_length=_BLOCK_LENGTH.value, temperature=0.0)
  rows = []
  try:
    for c in sizes:
      def client(seeds):
        with httpx.Client(timeout=600) as http:
          for s in seeds:
            r = http.post(url + '/v1/completions', json={**body, 'seed': s})
            r.raise_for_status()
      seeds = list(range(_REQUESTS.value))
      with concurrent.futures.ThreadPoolExecutor(c) as pool:
        list(pool.map(client, [seeds[i::c][:1] for i in range(c)]))  # Warm.
        t0 = time.perf_counter()
        list(pool.map(client, [seeds[i::c] for i in range(c)]))
        dt = time.perf_counter() - t0
      rows.append((f'server, {c} client{"s" if c > 1 else ""}',
                   _REQUESTS.value * _GEN_LENGTH.value / dt))
      print(f'  {rows[-1][0]}: {rows[-1][1]:,.1f} tokens/s', flush=True)
  finally:
    proc.terminate()
    proc.wait(120)
  return rows


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax import SamplingConfig  # pylint: disable=g-import-not-at-top
  sizes = sorted(int(c) for c in _CLIENTS.value)
  sampling = SamplingConfig(steps=_STEPS.value, gen_length=_GEN_LENGTH.value,
                            block_length=_BLOCK_LENGTH.value)
  with cli.one_line_errors():
    engine_rows = _engine_rows(sampling, sizes)
  server_rows = _server_rows(sizes)
  dev = jax.devices()[0]
  print(f'\n{_WORKDIR.value}, prompt {len(_PROMPT.value) + 1} tokens, gen_length '
        f'{_GEN_LENGTH.value}, block {_BLOCK_LENGTH.value}, {_STEPS.value} steps, '
        f'{_REQUESTS.value} requests per row, on {dev.device_kind}\n')
  print('| clients / batch | engine tokens/s | server tokens/s | server / engine |')
  print('|---|---|---|---|')
  for (_, e), (_, s), c in zip(engine_rows, server_rows, sizes):
    print(f'| {c} | {e:,.1f} | {s:,.1f} | {s / e:.0%} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
