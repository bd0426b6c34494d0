"""`launch.sample` and `launch.eval` reject each bad flag value in one line,
before restoring anything (the workdir does not even exist)."""

import subprocess
import sys

from tests.support import REPO

BAD = [
    ('sample', ['--num_samples=0'], 'flag --num_samples=0: must be a positive integer'),
    ('sample', ['--steps=-1'], 'flag --steps=-1: must be a positive integer'),
    ('sample', ['--gen_length=0'], 'flag --gen_length=0: must be a positive integer'),
    ('sample', ['--block_length=-8'],
     'flag --block_length=-8: must be a positive integer'),
    ('sample', ['--gen_length=30', '--block_length=8'],
     'flags block_length=8, gen_length=30: --gen_length must be a multiple of '
     '--block_length'),
    ('sample', ['--temperature=-0.5'], 'flag --temperature=-0.5: must be >= 0'),
    ('sample', ['--cfg_scale=-1'], 'flag --cfg_scale=-1.0: must be >= 0'),
    ('sample', ['--temperature=inf'], 'flag --temperature=inf: must be >= 0 and finite'),
    ('sample', ['--factor=inf'], 'flag --factor=inf: must be positive and finite'),
    ('sample', ['--threshold=1.5'], 'flag --threshold=1.5: must be in (0, 1]'),
    ('sample', ['--factor=0'], 'flag --factor=0.0: must be positive'),
    ('sample', ['--remasking=best'], 'flag --remasking=best: value should be one of'),
    ('sample', ['--parallel=fast'], 'flag --parallel=fast: value should be one of'),
    ('sample', ['--cache=full'], 'flag --cache=full: value should be one of'),
    ('sample', ['--noise=gauss'], 'flag --noise=gauss: value should be one of'),
    ('sample', ['--seed=x'], "flag --seed=x: invalid literal for int() with base 10"),
    ('eval', ['--num_rows=0'], 'flag --num_rows=0: must be a positive integer'),
    ('eval', ['--mc_num=-4'], 'flag --mc_num=-4: must be a positive integer'),
    ('eval', ['--batch_size=0'], 'flag --batch_size=0: must be a positive integer'),
    ('eval', ['--mc_num=10', '--batch_size=4'],
     'flags batch_size=4, mc_num=10: --mc_num must be a multiple of --batch_size'),
    ('eval', ['--cfg_scale=-2'], 'flag --cfg_scale=-2.0: must be >= 0'),
    ('eval', ['--mode=perplexity'], 'flag --mode=perplexity: value should be one of'),
    ('eval', ['--mode=pairs'], '--mode=pairs needs --data=FILE.jsonl.'),
    ('eval', ['--mode=choice', '--data=/no/such.jsonl'],
     '--data=/no/such.jsonl: no such file.'),
]


def test_every_bad_flag_is_one_line_before_any_work(tmp_path):
  workdir = tmp_path / 'never_created'
  procs = [subprocess.Popen([sys.executable, '-m', f'launch.{module}',
                             f'--workdir={workdir}', *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for module, args, _ in BAD]
  for (module, args, want), proc in zip(BAD, procs):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, (module, args, out)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {want}'), (module, args, err)
  assert not workdir.exists()

