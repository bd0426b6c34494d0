"""The shell blocks of README.md and docs/*.md parse, and the cheap ones run.

Every ```bash / ```sh / ```shell block, and the `$ ` lines of ```console
blocks, is read as shell. Each block must parse (`bash -n`) and must not lose a
line continuation (a line starting with `-` must follow a line ending in `\\`:
a comment after a continuation silently cuts the command there). Each block is
split into commands (continuations joined, `&&` chains split) and each command
is treated one of three ways, listed by `test_every_command_is_classified`:

* run: the commands of `RUN` below, exactly as the docs write them, with the
  workdirs and data files of `PATHS` moved into a temporary folder and the
  flags of `RUN` appended (absl takes the last value of a repeated flag, so
  they shrink the model, the steps and the lengths). The quick start's train
  command (`TRAIN`) runs once, as the module fixture, and every command that
  reads its workdir runs on that tiny run.
* flag check: any other `python -m launch.X` command of an absl launcher is
  parsed by the launcher's own flag definitions and validators (an unknown
  flag, a bad value or an unknown config key fails) without running it.
* parse only: the rest (installs, `curl`, `sbatch`, `dllm-lm-eval`, GPU runs).

Relative links between the pages (and their `#anchors`) must resolve too.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import support

REPO = support.REPO
PAGES = ['README.md'] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))
_FENCE = re.compile(r'^```(\w*)[^\n]*\n(.*?)^```', re.M | re.S)
SHELL = ('bash', 'sh', 'shell')

# The quick start's train command, shrunk: a 1-layer, 32-wide model, 4 steps of
# 4 x 32 tokens, no end-of-run sample.
TRAIN = 'python -m launch.train --workdir=/tmp/dllm'
TINY_TRAIN = ('--config.model.d_model=32 --config.model.n_layers=1 '
              '--config.model.n_heads=2 --config.model.d_ff=64 '
              '--config.model.max_len=64 --config.data.seq_len=32 '
              '--config.train.batch_size=4 --config.optimizer.warmup_steps=2 '
              '--config.train.steps=4 --config.train.log_every=2 '
              '--config.train.checkpoint_every=4 --config.sample.num_samples=0')
TINY_SAMPLE = '--steps=4 --gen_length=8 --block_length=4 --num_samples=1'

# Command as the docs write it -> flags appended when it runs. Run in this
# order (the block-diffusion sample reads the block-diffusion run).
RUN = {
    "python -m launch.sample --workdir=/tmp/dllm --prompt='def '": TINY_SAMPLE,
    "python -m launch.sample --workdir=/tmp/dllm --prompt='def ' --steps=32 "
    '--gen_length=64 --block_length=16 --parallel=threshold --threshold=0.9 '
    '--cache=dual': TINY_SAMPLE,
    "python -m launch.sample --workdir=/tmp/dllm --prompt=$'class Config:\\n    "
    "def __init__(self' --num_samples=3": TINY_SAMPLE,
    'python -m launch.eval --workdir=/tmp/dllm --mode=heldout --num_rows=16':
        '--num_rows=2 --mc_num=2 --batch_size=2',
    'python -m launch.make_sft_data --out=/tmp/sft_data': '--num_train=8',
    'python -m launch.export --workdir=/tmp/dllm --out=/tmp/dllm_hf': '',
    'python -m launch.train --workdir=/tmp/bd --config.train.objective=block_diffusion '
    '--config.train.block.block_size=32 --config.train.block.noise=row '
    '--config.train.block.weight=none': TINY_TRAIN + ' --config.train.block.block_size=8',
    "python -m launch.sample --workdir=/tmp/bd --prompt='def ' --parallel=threshold "
    '--threshold=0.95 --block_threshold_rule=llada2 --temperature=0.7':
        '--gen_length=16 --num_samples=1',
    'DRY_RUN=1 NODES=4 bash launch/slurm_gpu.sh --workdir=/shared/dllm': '',
    'DRY_RUN=1 TPU_NAME=my-v5p-64 NUM_WORKERS=8 bash launch/tpu_pod.sh '
    '--workdir=gs://bucket/dllm': '',
}

# Paths in the docs' commands -> a name under the test's temporary folder, and
# the content written there first (None: a folder the command creates).
PATHS = {
    '/tmp/dllm': ('dllm', None),
    '/tmp/bd': ('bd', None),
    '/tmp/sft_data': ('sft_data', None),
    '/tmp/dllm_hf': ('dllm_hf', None),
    'pairs.jsonl': ('pairs.jsonl', '{"prompt": "def ", "answer": "main():"}\n'),
    'mc.jsonl': ('mc.jsonl', '{"prompt": "def ", "choices": ["a", "b"], "label": 0}\n'),
    'qa.jsonl': ('qa.jsonl', '{"prompt": "def ", "answer": "main"}\n'),
}
_PATH = re.compile('|'.join(rf'(?<![\w/.]){re.escape(p)}(?![\w.])' for p in PATHS))
_LAUNCHER = re.compile(r'^python -m (launch\.\w+)(?:\s|$)')


@dataclasses.dataclass(frozen=True)
class Block:
  page: str
  line: int
  text: str  # The shell text (for console blocks: the `$ ` commands only).


def shell_blocks() -> list[Block]:
  blocks = []
  for page in PAGES:
    with open(os.path.join(REPO, page)) as f:
      text = f.read()
    for m in _FENCE.finditer(text):
      lang, body = m.group(1), m.group(2)
      line = text.count('\n', 0, m.start()) + 1
      if lang in SHELL:
        blocks.append(Block(page, line, body))
      elif lang == 'console':
        commands, more = [], False
        for row in body.splitlines():
          if row.startswith('$ ') or more:
            commands.append(row[2:] if row.startswith('$ ') and not more else row)
            more = row.endswith('\\')
        blocks.append(Block(page, line, '\n'.join(commands) + '\n'))
  return blocks


def commands(block: Block) -> list[str]:
  """The block's commands: continuations joined, comments dropped, `&&` split."""
  out = []
  for logical in re.sub(r'\\\n\s*', '', block.text).splitlines():
    words = shlex.split(logical, comments=True)
    if not words:
      continue
    logical = logical.strip()
    for cut in (m.start() for m in re.finditer(r'\s#', logical)):
      try:  # A trailing comment, not a `#` inside quotes.
        if shlex.split(logical[:cut]) == words:
          logical = logical[:cut].rstrip()
          break
      except ValueError:
        continue
    out += [part.strip() for part in logical.split(' && ')]
  return out


def kind(command: str) -> str:
  if command == TRAIN or command in RUN:
    return 'run'
  launcher = _LAUNCHER.match(command)
  if launcher and launcher.group(1) != 'launch.lm_eval':
    return 'flag check'
  return 'parse only'


def localise(command: str, tmp) -> str:
  """`command` with the docs' paths moved under `tmp` (files written there)."""
  def swap(m):
    name, content = PATHS[m.group(0)]
    path = os.path.join(tmp, name)
    if content is not None and not os.path.exists(path):
      with open(path, 'w') as f:
        f.write(content)
    return path
  return _PATH.sub(swap, command)


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
  return env


def _run(command: str, timeout: float = 120) -> str:
  done = subprocess.run(['bash', '-c', command], cwd=REPO, env=_env(), text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        timeout=timeout, check=False)
  assert done.returncode == 0, f'{command}\nexit {done.returncode}:\n{done.stdout[-3000:]}'
  return done.stdout


def test_blocks_are_found_on_every_page():
  blocks = shell_blocks()
  assert {b.page for b in blocks} >= {'README.md', 'docs/training.md', 'docs/sampling.md'}
  assert len(blocks) >= 20


@pytest.mark.parametrize('block', shell_blocks(), ids=lambda b: f'{b.page}:{b.line}')
def test_block_parses_and_keeps_its_continuations(block):
  done = subprocess.run(['bash', '-n'], input=block.text, text=True,
                        capture_output=True, check=False)
  assert done.returncode == 0, f'{block.page}:{block.line}: {done.stderr}'
  rows = block.text.splitlines()
  for i, row in enumerate(rows):
    if row.lstrip().startswith('-'):
      assert i and rows[i - 1].endswith('\\'), (
          f'{block.page}:{block.line + 1 + i}: a flag line without a continuation '
          f'before it (a comment after a `\\`?): {row.strip()!r}')


def test_every_command_is_classified():
  """Lists what runs, what is flag-checked and what only parses (see `-rA`);
  each entry of RUN is a command the docs hold, word for word."""
  found = {c: kind(c) for b in shell_blocks() for c in commands(b)}
  for command in [TRAIN, *RUN]:
    assert command in found, f'RUN names a command the docs do not hold: {command}'
  for what in ('run', 'flag check', 'parse only'):
    print(f'{what}:', *sorted(c for c, k in found.items() if k == what), sep='\n  ')
  assert any(TRAIN in commands(b) for b in shell_blocks() if b.page == 'README.md')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """The quick start's train command, shrunk (`TINY_TRAIN`); its folder."""
  tmp = str(tmp_path_factory.mktemp('docs'))
  out = _run(f'{localise(TRAIN, tmp)} {TINY_TRAIN}')
  assert 'step 4/4' in out and 'final parameters: fingerprint' in out, out
  return tmp


def test_the_cheap_commands_run(tiny_run):
  for command, extra in RUN.items():
    out = _run(f'{localise(command, tiny_run)} {extra}')
    if 'launch.sample' in command:
      assert '--- sample 0 ---' in out, out
  assert os.path.isfile(os.path.join(tiny_run, 'sft_data', 'train.jsonl'))
  assert os.path.isfile(os.path.join(tiny_run, 'dllm_hf', 'config.json'))


_FLAG_CHECK = r'''
import importlib, json, sys
from absl import flags
base = set(flags.FLAGS)
failures = []
for module, args in json.load(sys.stdin):
  for name in [m for m in sys.modules if m == 'launch' or m.startswith('launch.')]:
    del sys.modules[name]
  for name in [n for n in flags.FLAGS if n not in base]:
    if name in flags.FLAGS:
      delattr(flags.FLAGS, name)
  sys.argv = [module, *args]  # ml_collections reads --config.* overrides here.
  try:
    importlib.import_module(module)
    flags.FLAGS(sys.argv)
  except (Exception, SystemExit) as e:  # pylint: disable=broad-except
    failures.append(f'{module} {" ".join(args)}: {type(e).__name__}: {e}')
print(json.dumps(failures))
'''


def test_launcher_commands_pass_their_flag_checks(tmp_path):
  """Each `python -m launch.X` command that does not run is parsed by its
  launcher's flags (one subprocess for all of them)."""
  checks = []
  for block in shell_blocks():
    for command in commands(block):
      if kind(command) == 'flag check':
        words = shlex.split(localise(command, str(tmp_path)), comments=True)
        checks.append([words[2], words[3:]])
  assert checks
  done = subprocess.run([sys.executable, '-c', _FLAG_CHECK], input=json.dumps(checks),
                        cwd=REPO, env=_env(), text=True, capture_output=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  failures = json.loads(done.stdout.splitlines()[-1])
  assert not failures, '\n'.join(failures)


def _anchor(heading: str) -> str:
  """GitHub's anchor of a heading (lower case, punctuation dropped, spaces to -)."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def test_relative_links_and_anchors_resolve():
  """Every relative link of README.md and docs/ names a file of the repository
  and, with `#anchor`, a heading of that page."""
  bad = []
  for page in PAGES:
    with open(os.path.join(REPO, page)) as f:
      text = _FENCE.sub('', f.read())
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
      if '://' in target:
        continue
      path, _, anchor = target.partition('#')
      file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
      if not os.path.exists(os.path.join(REPO, file)):
        bad.append(f'{page}: {target} (no file {file})')
      elif anchor:
        with open(os.path.join(REPO, file)) as f:
          headings = re.findall(r'^#+ (.+)$', _FENCE.sub('', f.read()), flags=re.M)
        if anchor not in {_anchor(h) for h in headings}:
          bad.append(f'{page}: {target} (no heading #{anchor} in {file})')
  assert not bad, '\n'.join(bad)
