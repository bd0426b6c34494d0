"""The repository stands alone: no tracked file points outside it, and every
experiment's entry point runs from a copy of the tracked tree with nothing
beside it (so a file that only exists next to some checkout is caught here)."""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import sys

import pytest

from tests import support

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP = '..' + '/'  # Spelled in two parts so this file's own examples stay unflagged.

# A path token ends at whitespace, quotes, brackets, and the separators of
# Markdown, Python and shell text (`[x](path)`, `f(path, ...)`, `--flag=path`).
_TOKEN = re.compile(r'[^\s\'"`()\[\]{}<>,;=|*\\]+')

# Each experiment's tiniest run: two training steps of a 1-layer model and the
# fewest prompts that reach its code paths (defaults stay as documented), as
# (id, experiment, flags, slow). The default runs cost about 15 CPU s each; the
# autoregressive twin doubles the reversal run, and sft_tasks goes through the
# full trainer (Orbax checkpoints, the end-of-run sample): those are slow-marked.
_TINY_REVERSAL = ['--steps=2', '--num_poems=1', '--num_facts=1', '--batch_rows=2',
                  '--tokenizer=char', '--layers=1']
SMOKE_RUNS = [
    ('reversal_curse', 'reversal_curse', [*_TINY_REVERSAL, '--only_diffusion'], False),
    ('reversal_curse-with_twin', 'reversal_curse', _TINY_REVERSAL, True),
    ('steps_dial', 'steps_dial', ['--train_steps=2', '--samples=1', '--layers=1',
                                  '--rules=threshold', '--settings_per_rule=1'], False),
    ('sft_tasks', 'sft_tasks', ['--steps=2', '--layers=1', '--batch_size=2',
                                '--num_train=8', '--num_validation=1',
                                '--data=smoke/sft_data', '--workdir=smoke/sft_run'],
     True),
]


def _tracked_files() -> list[str]:
  """Paths (relative, '/'-separated) of the files git tracks in this checkout."""
  try:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True,
                         check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout: no list of tracked files')
  return [p for p in out.decode().split('\0') if p]


def _escapes(path: str) -> bool:
  return path == '..' or path.startswith(UP)


def outside_paths(text: str, rel_path: str, existing: set[str]) -> list[tuple[int, str]]:
  """(line number, path) of each relative path in `text` that leaves the repository.

  `text` is the content of the tracked file `rel_path`; `existing` holds every
  tracked file and folder. A token counts as a path when it has a `..`
  component followed by a name (not a bare `..`, an ellipsis such as
  `.../device`, a Python relative import, or a URL); absolute and `$VAR/`
  paths are out of scope. It is fine when, read from the repository root, it
  stays inside, or when, read from the file's own folder (a relative link), it
  names a tracked file or folder; otherwise it points outside.
  """
  here = posixpath.dirname(rel_path)
  found = []
  for number, line in enumerate(text.splitlines(), 1):
    for token in _TOKEN.findall(line):
      token = token.rstrip('.:!?')
      parts = token.split('/')
      if ('..' not in parts or '://' in token or token.startswith(('/', '~', '$'))
          or all(p in ('..', '.', '') for p in parts[parts.index('..'):])):
        continue
      from_root = posixpath.normpath(token)
      from_here = posixpath.normpath(posixpath.join(here, token))
      if _escapes(from_root) and (_escapes(from_here) or from_here not in existing):
        found.append((number, token))
  return found


def test_outside_paths_tells_links_from_escapes():
  existing = {'experiments', 'experiments/common.py', 'README.md'}
  flagged = lambda text, at='README.md': [p for _, p in outside_paths(text, at, existing)]
  assert flagged(f'see `{UP}shared/data/x.json` and ({UP}notes.md).') == [
      f'{UP}shared/data/x.json', f'{UP}notes.md']
  assert flagged(f'  * the couplets of {UP}shared/x.json, as',
                 'experiments/a/run.py') == [f'{UP}shared/x.json']
  assert flagged(f'[common]({UP}common.py) and {UP}{UP}README.md',
                 'experiments/a/README.md') == []  # Relative links inside.
  assert flagged(f'{UP}{UP}{UP}x', 'experiments/a/README.md') == [f'{UP}{UP}{UP}x']
  assert flagged(f'tokens/s (.../device), from ..x import y, `{UP}` paths, '
                 f'https://h.org/a/{UP}b, cd "$(dirname "$0")/..", $HOME/{UP}x, '
                 f'/abs/{UP}x, experiments/{UP}README.md') == []


def test_no_tracked_file_points_outside_the_repository():
  tracked = _tracked_files()
  existing = set(tracked)
  for path in tracked:
    while (path := posixpath.dirname(path)):
      existing.add(path)
  bad = []
  for path in tracked:
    try:
      with open(os.path.join(REPO, path), 'rb') as f:
        data = f.read()
    except FileNotFoundError:  # Deleted in the working tree, not yet committed.
      continue
    if b'\0' in data:  # Binary (images).
      continue
    try:
      text = data.decode('utf-8')
    except UnicodeDecodeError:
      continue
    bad += [f'{path}:{n}: {p}' for n, p in outside_paths(text, path, existing)]
  assert not bad, 'paths outside the repository:\n' + '\n'.join(bad)


def test_every_experiment_has_a_smoke_run():
  runs = {p.split('/')[1] for p in _tracked_files()
          if re.fullmatch(r'experiments/[^/]+/run\.py', p)}
  assert runs == {name for _, name, _, _ in SMOKE_RUNS}


@pytest.fixture(scope='module')
def clean_copy(tmp_path_factory):
  """The tracked files (as in this working tree) copied into an empty folder."""
  root = tmp_path_factory.mktemp('standalone')
  repo = root / 'repo'
  for path in _tracked_files():
    src = os.path.join(REPO, path)
    if os.path.isfile(src):
      os.makedirs(repo / posixpath.dirname(path), exist_ok=True)
      shutil.copy2(src, repo / path)
  (root / 'tmp').mkdir()
  return repo


@pytest.mark.parametrize('name, flags', [
    pytest.param(name, flags, id=run_id, marks=[pytest.mark.slow] if slow else [])
    for run_id, name, flags, slow in SMOKE_RUNS])
def test_experiment_runs_from_a_clean_copy(clean_copy, name, flags):
  env = dict(os.environ, PYTHONPATH=str(clean_copy),
             TMPDIR=str(clean_copy.parent / 'tmp'), MPLBACKEND='Agg')
  # A smoke run only checks that it runs: XLA's optimisation passes would cost
  # more than half of its CPU time (compiling, not running, dominates).
  # (The session's conftest usually set them already.)
  env = support.with_fast_compiles(env)
  script = os.path.join('experiments', name, 'run.py')
  results = clean_copy / 'experiments' / name / 'results.md'
  results.unlink(missing_ok=True)  # The copy's committed one; the run writes anew.
  r = subprocess.run([sys.executable, script, *flags], cwd=clean_copy,
                     env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, f'{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
  assert results.is_file()
