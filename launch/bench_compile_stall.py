r"""Does compilation stall the server? A steady client's latency with and
without a second client that cycles max_tokens through 1..--max_tokens.

  python -m launch.bench_compile_stall --workdir=/tmp/dllm
  python -m launch.bench_compile_stall --workdir=/tmp/dllm --warmup_tokens=all

`launch.serve` runs in a subprocess on 127.0.0.1. First the steady client
alone sends --idle_requests requests one after another (its settings warm
after the first); then, while the cycling client sends max_tokens 1, 2, ...,
--max_tokens (one after another, each a new length until the buckets repeat),
the steady client keeps sending. Printed: the steady client's p50 / p99
latency idle and during the cycle, their ratio, the programs the server
compiled during the cycle (`/health` `compiles`: steps and re-packings), and
the cycle's duration. Each max_tokens runs its length bucket (a power of two
of whole blocks, `Engine.gen_bucket`), so the cycle meets a few programs, and
those compile on the server's compile thread while the steady client's batch
keeps stepping. On a CPU the cycling client's batches also take compute from
the steady one (two batches step in turn); --warmup_tokens=all compiles every
bucket at start, which isolates that share.
"""

import threading
import time

from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.',
                               required=True)
_MAX_TOKENS = flags.DEFINE_integer('max_tokens', 256, 'The cycle: max_tokens 1..this.')
_STEADY_TOKENS = flags.DEFINE_integer('steady_tokens', 32, "The steady client's max_tokens.")
_IDLE_REQUESTS = flags.DEFINE_integer('idle_requests', 40, 'Steady requests, idle.')
_PROMPT = flags.DEFINE_string('prompt', 'The quick brown fox ', 'Prompt text.')
_WARMUP_TOKENS = flags.DEFINE_string('warmup_tokens', '', "launch.serve's --warmup_tokens.")
_STEPS = flags.DEFINE_integer('steps', None, "launch.serve's --steps (default: the run's).")


def _pct(xs, q):
  xs = sorted(xs)
  return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv):
  cli.start(argv)
  import httpx  # pylint: disable=g-import-not-at-top
  from launch import serve_process  # pylint: disable=g-import-not-at-top
  args = [f'--workdir={_WORKDIR.value}', f'--max_tokens={_MAX_TOKENS.value}',
          f'--warmup={len(_PROMPT.value) + 1}', '--max_batch=8', '--temperature=0']
  if _WARMUP_TOKENS.value:
    args.append(f'--warmup_tokens={_WARMUP_TOKENS.value}')
  if _STEPS.value:
    args.append(f'--steps={_STEPS.value}')
  t0 = time.perf_counter()
  proc, url = serve_process.start(args, timeout_s=1800)
  ready_s = time.perf_counter() - t0
  http = httpx.Client(base_url=url, timeout=600)

  def ask(tokens, seed):
    t = time.perf_counter()
    r = http.post('/v1/completions', json={'prompt': _PROMPT.value, 'seed': seed,
                                           'max_tokens': tokens})
    r.raise_for_status()
    return time.perf_counter() - t

  try:
    compiles = lambda: http.get('/health').json()['compiles']
    ask(_STEADY_TOKENS.value, 0)  # Its programs (compiled unless warmed).
    idle = [ask(_STEADY_TOKENS.value, s) for s in range(1, _IDLE_REQUESTS.value + 1)]
    before, done, busy = compiles(), threading.Event(), []

    def cycle():
      with httpx.Client(base_url=url, timeout=600) as other:
        for t in range(1, _MAX_TOKENS.value + 1):
          other.post('/v1/completions', json={'prompt': _PROMPT.value, 'seed': t,
                                              'max_tokens': t}).raise_for_status()
      done.set()
    cycler = threading.Thread(target=cycle)
    start = time.perf_counter()
    cycler.start()
    seed = 1000
    while not done.is_set():
      busy.append(ask(_STEADY_TOKENS.value, seed))
      seed += 1
    cycler.join()
    cycle_s = time.perf_counter() - start
    compiled = compiles() - before
  finally:
    http.close()
    proc.terminate()
    proc.wait(120)
  import jax  # pylint: disable=g-import-not-at-top
  print(f'\n{_WORKDIR.value}, prompt {len(_PROMPT.value) + 1} tokens, steady max_tokens '
        f'{_STEADY_TOKENS.value}, cycle max_tokens 1..{_MAX_TOKENS.value}, warmup_tokens '
        f'{_WARMUP_TOKENS.value or "(default)"}, server ready in {ready_s:.1f} s, on '
        f'{jax.devices()[0].device_kind}\n')
  print('| steady client | requests | p50 s | p99 s |')
  print('|---|---|---|---|')
  print(f'| idle server | {len(idle)} | {_pct(idle, 0.5):.3f} | {_pct(idle, 0.99):.3f} |')
  print(f'| during the cycle | {len(busy)} | {_pct(busy, 0.5):.3f} | {_pct(busy, 0.99):.3f} |')
  print(f'\np99 during the cycle / idle p99: {_pct(busy, 0.99) / _pct(idle, 0.99):.2f}x; '
        f'programs compiled during the cycle: {compiled}; cycle of {_MAX_TOKENS.value} '
        f'requests: {cycle_s:.1f} s')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
