"""The benchmark launchers run at CPU-sized shapes and print their tables."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
  out = subprocess.run([sys.executable, '-m', *args], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def _table(text, header):
  """The rows of the markdown table that starts with `header`."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(header))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append([c.strip() for c in line.strip('|').split('|')])
  return rows


def test_bench_train_rows_and_profile_summary(tmp_path):
  out = _run('launch.bench_train', '--seq_len=32', '--batch=4,8',
             '--grad_accum_steps=1,2', '--segments=false,3',
             '--embed_grad=scatter,onehot', '--steps=1', '--warmup=1',
             f'--profile_dir={tmp_path}', '--profile_steps=1')
  rows = _table(out, '| batch x seq |')
  assert [r[0] for r in rows] == [
      '4 x 32', '8 x 32, accum 2, 3 documents, onehot embedding grad']
  assert all(float(r[1]) > 0 for r in rows)  # step ms
  summary = _run('launch.profile_summary', str(tmp_path / 'row1'), '--top=5')
  kinds = _table(summary, '| kind |')
  assert kinds and all(float(k[1]) >= 0 for k in kinds)
  assert len(_table(summary, '| kernel |')) == 5


def test_bench_kernel_times_each_implementation_in_interpret_mode():
  out = _run('launch.bench_kernel', '--vocab=1000', '--rows=16', '--repeats=1',
             '--interpret', '--twin_splits=1,4', '--kernels=16:256:1:0:8,4:128:0:1:4',
             '--head_dim=32', '--head_rows=16', '--head_temperatures=0',
             '--head_kernels=16:128:16:0:4')
  rows = _table(out, '| rows |')
  head = [r for r in rows if r[3].startswith(('head', 'fused head'))]
  assert [r[3] for r in head] == [
      'head 32 x 1000 alone', 'head, then XLA twin', 'head, then kernel 16:256:1:0:8:2',
      'fused head kernel 16:128:16:0:4:3']
  assert all(r[6] == '1.0000' for r in head[1:])  # Same candidates as head + twin.
  rows = [r for r in rows if r not in head]
  names = ['XLA twin', 'XLA twin, 4 splits', 'kernel 16:256:1:0:8:2',
           'kernel 4:128:0:1:4:2']
  assert [(r[1], r[3]) for r in rows] == [(t, n) for t in ('0.0', '1.0') for n in names]
  assert all(r[6] == '1.0000' for r in rows)  # Same candidates as the twin.
  assert all(float(r[4]) > 0 for r in rows)
