"""Every config value checked: each numeric or choice field of every section,
given a bad value, is refused in one line naming `section.field`, the value and
what is allowed; the launcher prints that line and exits before any work."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing

import hypothesis
import pytest
from hypothesis import strategies as st

from dllm_jax import models
from dllm_jax.tokenizers import ByteTokenizer
from dllm_jax.training import provenance, sections
from dllm_jax.training.sections import RunConfig
from launch.configs import default
from tests.support import REPO

_OWNERS = (RunConfig,) + sections.ALL_SECTIONS


def _checked_fields():
  """(owner class, field) for every field with a declared rule."""
  return [(owner, f) for owner in _OWNERS for f in dataclasses.fields(owner)
          if f.metadata and any(f.metadata[k] for k in ('range', 'choices', 'check'))]


def _bad_values(owner, f) -> st.SearchStrategy:
  """Values the field's rule refuses: out of range, not a choice, wrong type."""
  meta, hint = f.metadata, typing.get_type_hints(owner)[f.name]
  is_int = int in (typing.get_args(hint) or (hint,))
  options = []
  r = meta['range']
  if r is not None:
    num = st.integers if is_int else (lambda **kw: st.floats(allow_nan=False, **kw))
    if r.lo is not None:
      top = r.lo if r.lo_open else (r.lo - 1 if is_int else r.lo)
      kw = {} if is_int else {'exclude_max': not r.lo_open}
      options.append(num(max_value=top, **kw))
    if r.hi is not None:
      low = r.hi if r.hi_open else (r.hi + 1 if is_int else r.hi)
      kw = {} if is_int else {'exclude_min': not r.hi_open}
      options.append(num(min_value=low, **kw))
    options.append(st.text(max_size=3))  # Wrong type.
  if meta['choices'] is not None:
    choices = sections._choices(meta)  # pylint: disable=protected-access
    options.append(st.text(min_size=1, max_size=8).filter(lambda s: s not in choices))
    options.append(st.integers())
  if meta['check'] is not None:
    options.append(st.sampled_from(['csv:x', 'bpe:x', 'byte:x', '', 'stdlib:x']))
  # Signed zeros and the like: keep only numbers the range really refuses.
  return st.one_of(options).filter(
      lambda v: r is None or isinstance(v, str) or v not in r)


@pytest.mark.parametrize('owner,field', _checked_fields(),
                         ids=lambda x: getattr(x, 'name', getattr(x, 'NAME', None)))
@hypothesis.settings(max_examples=15, deadline=None, database=None)
@hypothesis.given(data=st.data())
def test_every_field_refuses_a_bad_value_in_one_line(owner, field, data):
  value = data.draw(_bad_values(owner, field))
  key = f'{owner.NAME}.{field.name}' if owner.NAME else field.name
  with pytest.raises(ValueError) as e:
    owner.of({field.name: value})
  msg = str(e.value)
  assert '\n' not in msg and key in msg and repr(value) in msg, msg
  assert 'allowed' in msg or 'unknown' in msg, msg


def test_every_numeric_or_choice_field_declares_its_rule():
  """No int/float/str field is left unchecked except free-form text ones."""
  free_text = {'data.data_dir', 'data.text_field', 'data.prompt_field',
               'data.response_field', 'train.init_from', 'sample.prompt'}
  ruled = {(o.NAME + '.' if o.NAME else '') + f.name for o, f in _checked_fields()}
  for owner in _OWNERS:
    hints = typing.get_type_hints(owner)
    for f in dataclasses.fields(owner):
      key = (owner.NAME + '.' if owner.NAME else '') + f.name
      kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
      if any(k in (int, float, str) for k in kinds) and key not in free_text:
        assert key in ruled, key
  assert len(sections.field_table()) == sum(
      1 for o in _OWNERS for f in dataclasses.fields(o) if f.metadata)


def test_run_config_reads_the_launcher_config_and_names_unknown_keys():
  config = default.get_config()
  run = RunConfig.of(config)
  assert run.train.steps == config.train.steps and run.model.family == 'llada'
  assert run.to_dict() == config.to_dict()
  d = config.to_dict()
  d['train']['stepz'] = 3
  with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
    RunConfig.of(d)
  d = config.to_dict()
  d['optimizer']['lr'] = -1.0
  with pytest.raises(ValueError, match=r'^optimizer.lr=-1.0 is out of range; '
                     r'allowed: > 0.$'):
    RunConfig.of(d)


def test_preset_must_belong_to_the_family():
  with pytest.raises(ValueError, match="unknown model.family 'moe'"):
    sections.ModelSection(family='moe')
  with pytest.raises(ValueError, match="unknown model.preset 'huge'"):
    sections.ModelSection(preset='huge')
  assert models.preset_family('tiny').name == 'llada'


def test_resume_refusals_are_the_fixed_fields():
  assert RunConfig.fixed_keys() == {
      'seed', 'train.objective', 'train.batch_size', 'data.source', 'data.seq_len',
      'data.tokenizer', 'data.packing', 'data.record_format', 'data.text_field',
      'data.prompt_field', 'data.response_field', 'data.num_workers',
      'model.family', 'model.preset', 'model.param_dtype', 'model.d_model',
      'model.n_layers', 'model.n_heads', 'model.d_ff', 'model.max_len'}
  run = RunConfig.of(default.get_config())
  tok = ByteTokenizer()
  record = provenance.run_record(run.to_dict(), run.model.model_config(), tok)
  older = provenance.run_record(run.to_dict(), run.model.model_config(), tok)
  del older['config']['model']['family']  # Written before model.family existed.
  assert provenance.check_resume(older, record) == [
      "config.model.family: '<absent>' -> 'llada'"]
  changed = dataclasses.replace(run, data=dataclasses.replace(run.data, packing='stream'))
  with pytest.raises(ValueError, match='data.packing'):
    provenance.check_resume(record, provenance.run_record(
        changed.to_dict(), run.model.model_config(), tok))


@pytest.mark.parametrize('override,line', [
    ('--config.optimizer.lr=-1', 'error: optimizer.lr=-1.0 is out of range; '
     'allowed: > 0.'),
    ('--config.data.packing=zip', "error: unknown data.packing 'zip'; allowed: "
     "'concat', 'first_fit', 'stream'."),
])
def test_train_launcher_prints_one_line_before_any_work(tmp_path, override, line):
  workdir = tmp_path / 'run'
  r = subprocess.run([sys.executable, '-m', 'launch.train', f'--workdir={workdir}',
                      override], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines()[-1] == line, r.stderr
  assert not os.path.exists(workdir)  # Nothing was started.


_LONG_PROMPT = 'x' * 500
BAD_CONFIGS = [  # (arguments after --workdir, the one line it ends with)
    (['--config.optimizer.lr=inf'],
     'error: optimizer.lr=inf is not a finite number; allowed: > 0.'),
    (['--config.sample.temperature=inf'],
     'error: sample.temperature=inf is not a finite number; allowed: >= 0.'),
    (['--config.train.steps=3', '--config.train.stepz=10'],
     "error: unknown config key 'train.stepz' (did you mean 'train.steps'?)."),
    (['--config.trian.steps=3'],
     "error: unknown config section 'trian' in --config.trian.steps (did you mean "
     "'train'?)."),
    (['--config={dir}/syntax_error.py'],
     'error: cannot load --config: {dir}/syntax_error.py, line 1: invalid syntax: '
     'def get_config(:'),
    (['--config.sample.gen_length=30'],
     'error: sample settings: gen_length=30 is not divisible by block_length=8 (or '
     'set sample.num_samples=0: no sample after training).'),
    (['--config.sample.steps=1024'],
     'error: sample settings: steps=1024 exceeds the 64 positions to fill '
     '(gen_length): each step commits at least one (or set sample.num_samples=0: '
     'no sample after training).'),
    (['--config.data.tokenizer=hf:{dir}/hf'],
     'error: {dir}/hf/tokenizer.json is not a valid tokenizer.json ('),
    ([f'--config.sample.prompt={_LONG_PROMPT}'],
     'error: sample settings: the prompt (501 tokens) and gen_length 64 need 565 '
     'positions, more than the model max_len 512 (or set sample.num_samples=0: no '
     'sample after training).'),
]


def test_bad_configs_end_the_train_launcher_in_one_line_before_any_work(tmp_path):
  """Infinite values, a misspelt key beside a valid one, an unknown section, a
  config file that does not parse, a corrupt tokenizer.json, sample settings the
  end-of-run sample cannot use: one line each, before a workdir is made (one
  step would otherwise run). A line ending in '(' is a prefix."""
  (tmp_path / 'syntax_error.py').write_text('def get_config(:\n  pass\n')
  os.makedirs(tmp_path / 'hf')
  (tmp_path / 'hf' / 'tokenizer.json').write_text('{"model": {')  # Cut short.
  runs = [(tmp_path / f'run{i}', [a.format(dir=tmp_path) for a in args],
           line.format(dir=tmp_path)) for i, (args, line) in enumerate(BAD_CONFIGS)]
  procs = [subprocess.Popen([sys.executable, '-m', 'launch.train', f'--workdir={w}',
                             '--config.train.steps=1', *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for w, args, _ in runs]
  for (workdir, args, line), proc in zip(runs, procs):
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0 and 'Traceback' not in err, (args, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert last == line or line.endswith('(') and last.startswith(line), (
        args, err[-2000:])
    assert not os.path.exists(workdir), args
