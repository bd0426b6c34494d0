r"""Where a profiled step spends its device time; prints a table.

  python -m launch.bench_train ... --profile_dir=/tmp/prof
  python -m launch.profile_summary /tmp/prof/row0 --steps=2

Reads the Perfetto trace that `jax.profiler.trace(..., create_perfetto_trace=True)`
writes (the newest `perfetto_trace.json.gz` under the directory), keeps the
device's kernel events (the host's Python and runtime threads are left out when a
device is present), and sums their durations by kernel name and by kind: matrix
products, attention, other fusions (elementwise and reductions), copies. Times are
per step when --steps says how many steps the trace holds; --floor_gb prints the
step's memory floor (that many GB read at --bandwidth) beside its device time.
"""

import collections
import glob
import gzip
import json
import os
import re

from absl import app, flags

from launch import cli

_STEPS = flags.DEFINE_integer('steps', 1, 'Steps the trace holds (times are per step).')
_TOP = flags.DEFINE_integer('top', 20, 'Kernels listed.')
_FLOOR_GB = flags.DEFINE_float(
    'floor_gb', 0.0, 'If > 0, GB each step must read at least (e.g. 16 for the '
    "8B model's bf16 weights): the step's memory floor is printed beside its time.")
_BANDWIDTH = flags.DEFINE_float('bandwidth', 3.0e12, 'Copy bandwidth for the floor '
                                '(bytes/s; H100 ~3.0e12, H200 ~4.3e12).')

# Kernel-name patterns of each kind, first match wins.
KINDS = (
    ('attention', re.compile(r'cudnn|fmha|flash|attention|sdpa', re.I)),
    ('matmul', re.compile(r'gemm|cublas|cutlass|xmma|nvjet|wgmma|matmul|dot', re.I)),
    ('copy', re.compile(r'memcpy|memset|copy', re.I)),
    ('reduction', re.compile(r'reduce|reduction', re.I)),
    ('fusion', re.compile(r'fusion|loop_|input_|triton|kernel', re.I)),
)


def kind_of(name: str) -> str:
  for kind, pattern in KINDS:
    if pattern.search(name):
      return kind
  return 'other'


def load_events(trace_dir: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise app.UsageError(f'no perfetto_trace.json.gz under {trace_dir}.')
  with gzip.open(paths[-1], 'rt') as f:
    text = f.read()
  data, _ = json.JSONDecoder().raw_decode(text)  # The file may carry trailing data.
  return data['traceEvents'] if isinstance(data, dict) else data


def device_kernels(events: list[dict]) -> list[dict]:
  """Complete ('X') kernel events: on device processes (pid named /device:...),
  only their CUDA-stream threads where those exist (the "XLA Modules"/"XLA Ops"
  threads repeat the same time at coarser grain); on a trace without a device
  (CPU), every event but Python frames and the runtime's own."""
  names = {e['pid']: e['args']['name'] for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  device_pids = {p for p, n in names.items()
                 if 'device' in n.lower() or 'gpu' in n.lower()}
  threads = {(e['pid'], e.get('tid')): e['args']['name'] for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  complete = [e for e in events if e.get('ph') == 'X']
  if not device_pids:
    return [e for e in complete if not e['name'].startswith(('$', 'ThunkExecutor',
                                                            'PjitFunction'))]
  on_device = [e for e in complete if e['pid'] in device_pids]
  thread = lambda e: threads.get((e['pid'], e.get('tid')), '').lower()
  streams = [e for e in on_device if 'stream' in thread(e)]
  return streams or on_device


def summarize(kernels: list[dict], steps: int, top: int,
              floor_ms: float = 0.0) -> str:
  """The tables; with `floor_ms` > 0 also the step's time against that floor."""
  by_name = collections.defaultdict(lambda: [0.0, 0])
  for e in kernels:
    by_name[e['name']][0] += float(e.get('dur', 0.0))
    by_name[e['name']][1] += 1
  total = sum(v[0] for v in by_name.values()) or 1.0
  by_kind = collections.Counter()
  for name, (dur, _) in by_name.items():
    by_kind[kind_of(name)] += dur
  lines = [f'device time per step: {total / steps / 1e3:.2f} ms '
           f'(sum of kernel durations; overlap counted twice)']
  if floor_ms > 0:
    lines.append(f'memory floor: {floor_ms:.2f} ms/step; device time is '
                 f'{total / steps / 1e3 / floor_ms:.2f}x the floor')
  lines += ['', '| kind | ms/step | share |', '|---|---|---|']
  lines += [f'| {k} | {d / steps / 1e3:.2f} | {100 * d / total:.1f}% |'
            for k, d in by_kind.most_common()]
  lines += ['', '| kernel | kind | calls/step | ms/step | share |', '|---|---|---|---|---|']
  ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
  lines += [f'| {name[:80]} | {kind_of(name)} | {n / steps:g} | {d / steps / 1e3:.3f} '
            f'| {100 * d / total:.1f}% |' for name, (d, n) in ranked]
  return '\n'.join(lines)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m launch.profile_summary TRACE_DIR')
  floor_ms = 1e3 * _FLOOR_GB.value * 1e9 / _BANDWIDTH.value
  print(summarize(device_kernels(load_events(argv[1])), _STEPS.value, _TOP.value,
                  floor_ms))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
