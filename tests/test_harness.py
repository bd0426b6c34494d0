"""lm-evaluation-harness model `dllm_jax`: the harness's own runner on local
tasks (YAML and JSONL written here, nothing downloaded) gives the numbers
launch.eval gives on the same data."""

import ast
import glob
import importlib.metadata
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dllm_jax.evaluation import likelihood
from dllm_jax.serving import Request
from tests.support import REPO

lm_eval = pytest.importorskip('lm_eval')

MC_YAML = """task: dllm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""
GEN_YAML = """task: dllm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
metric_list:
  - metric: exact_match
"""
# Prompt and answer over 32 bytes: every ELBO call shares the 64-token bucket.
MC = [('Complete the sentence. The cat sat on the', [' mat', ' moon', ' sky']),
      ('Simple arithmetic, please answer: 1 + 1 =', [' 2', ' 3']),
      ('A question of geography. Paris is in', [' France', ' Peru']),
      ('Some physics for the curious. Water is', [' wet', ' dry', ' red'])]
GEN = ['Say hi:', 'Count: 1 2', 'abc', 'Once upon']
MODEL_ARGS = dict(mc_num=8, mc_batch_size=4, seed=3, gen_length=8, block_length=4,
                  steps=4)


@pytest.fixture(scope='module')
def tasks(random_workdir, tmp_path_factory):
  """The model, and task files whose expected scores are known: labels and
  answers are chosen from the model's own scores so that half are right."""
  os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  from dllm_jax.evaluation import harness
  lm = harness.DllmJaxLM(workdir=random_workdir, **MODEL_ARGS)
  e, key = lm.engine, jax.random.key(MODEL_ARGS['seed'])
  path = tmp_path_factory.mktemp('tasks')
  mc_rows, lls = [], []
  for i, (prompt, choices) in enumerate(MC):  # As launch.eval --mode=choice.
    ll = [likelihood.log_likelihood(
        e.params, e.tokenizer.encode(prompt, add_bos=True), e.tokenizer.encode(c),
        jax.random.fold_in(key, i), config=e.config, mc_num=8, batch_size=4)
          for c in choices]
    lls.append(ll)
    label = int(np.argmax(ll)) if i % 2 == 0 else int(np.argmin(ll))
    mc_rows.append({'prompt': prompt, 'choices': choices, 'label': label})
  done = e.generate([Request(p, lm.sampling, seed=3 + i) for i, p in enumerate(GEN)])
  gen_rows = [{'prompt': p, 'answer': c.text.split('\n')[0] if i % 2 == 0 else 'no'}
              for i, (p, c) in enumerate(zip(GEN, done))]
  for name, rows, yaml in (('mc', mc_rows, MC_YAML), ('gen', gen_rows, GEN_YAML)):
    with open(path / f'{name}.jsonl', 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
    (path / f'{name}.yaml').write_text(yaml.format(data=path / f'{name}.jsonl'))
  return lm, str(path), lls


def test_harness_runner_scores_local_tasks(tasks):
  from lm_eval.api.registry import get_model
  from lm_eval.tasks import TaskManager
  lm, path, lls = tasks
  assert get_model('dllm_jax') is type(lm)
  assert get_model('dummy').__name__ == 'DummyLM'  # lm-eval's own models stay.
  out = lm_eval.simple_evaluate(model=lm, tasks=['dllm_mc', 'dllm_gen'],
                                task_manager=TaskManager(include_path=path,
                                                         include_defaults=False),
                                log_samples=True)
  assert out['results']['dllm_mc']['acc,none'] == 0.5
  assert out['results']['dllm_gen']['exact_match,none'] == 0.5
  for s in out['samples']['dllm_mc']:
    got = [r[0][0] for r in s['resps']]
    np.testing.assert_allclose(got, lls[s['doc_id']], rtol=1e-6)


def test_rolling_loglikelihood_sums_windows(tasks):
  from lm_eval.api.instance import Instance
  lm = tasks[0]
  text = 'x' * 100  # Longer than the model (64): two windows.
  req = Instance('loglikelihood_rolling', {}, (text,), 0, ('t', 0, 1))
  (total,) = lm.loglikelihood_rolling([req])
  assert np.isfinite(total) and total < 0


def _env() -> dict[str, str]:
  """This checkout's dllm_jax ahead of an installed copy."""
  path = os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')]))
  return {**os.environ, 'PYTHONPATH': path, 'HF_DATASETS_OFFLINE': '1',
          'HF_HUB_OFFLINE': '1'}


def _lm_eval_entry_point() -> importlib.metadata.EntryPoint:
  """The `lm_eval.models` entry point that setup.py declares."""
  with open(os.path.join(REPO, 'setup.py')) as f:
    tree = ast.parse(f.read())
  (value,) = [node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and [t.id for t in node.targets if isinstance(t, ast.Name)] == ['LM_EVAL_MODEL']]
  setup_call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and getattr(node.func, 'id', None) == 'setup')
  (groups,) = [k.value for k in setup_call.keywords if k.arg == 'entry_points']
  group_names = [ast.literal_eval(key) for key in groups.keys]
  assert 'lm_eval.models' in group_names  # lm-eval's plugin group for models.
  name, target = (part.strip() for part in value.split('='))
  return importlib.metadata.EntryPoint(name=name, value=target, group='lm_eval.models')


def test_entry_point_names_the_registered_model():
  """setup.py's `lm_eval.models` entry point names the class that registers
  itself as `dllm_jax` (lm-eval reconciles the two only when they agree)."""
  from lm_eval.api.registry import get_model
  from dllm_jax.evaluation import harness
  ep = _lm_eval_entry_point()
  assert ep.name == 'dllm_jax'
  assert ep.load() is harness.DllmJaxLM is get_model('dllm_jax')
  assert ep.value == f'{harness.DllmJaxLM.__module__}:{harness.DllmJaxLM.__name__}'


def test_entry_point_resolves_lazily_beside_lm_evals_own_models():
  """As lm-eval's plugin discovery does, the entry point's target becomes a
  lazy placeholder: nothing of ours (no jax) loads until `--model dllm_jax` is
  asked for; then the class's own registration upgrades it, and lm-eval's
  models stay."""
  ep = _lm_eval_entry_point()
  code = '; '.join([
      'import sys',
      # An environment installed before this change may still carry the old
      # interpreter-start hook (dllm_jax_lm_eval.pth): take it out here.
      "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != "
      "'dllm_jax_lm_eval_hook']",
      'import lm_eval.models',
      'from lm_eval.api.registry import model_registry as r, get_model',
      "assert 'dllm_jax' not in r",
      f'r.register({ep.name!r}, target={ep.value!r})',
      "print('jax' in sys.modules, 'dllm_jax' in sys.modules)",
      f"cls = get_model({ep.name!r}); print(cls.__name__, 'jax' in sys.modules, "
      "get_model('dummy').__name__)"])
  r = subprocess.run([sys.executable, '-c', code], env=_env(), cwd=REPO, text=True,
                     capture_output=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split('\n')[:2] == ['False False', 'DllmJaxLM True DummyLM']


@pytest.mark.slow
def test_launch_eval_and_the_lm_eval_command_agree(tasks, random_workdir, tmp_path):
  """`launch.eval` prints the scores and ELBOs the harness gives; so does
  lm-eval's command line run as `python -m launch.lm_eval` (`dllm-lm-eval`),
  which registers the model `dllm_jax` (lm-eval 0.4.13 reads no plugins)."""
  _, path, lls = tasks
  run = lambda *a: subprocess.run([sys.executable, '-m', *a], cwd=REPO, text=True,
                                  capture_output=True, timeout=600)
  common = [f'--workdir={random_workdir}', '--mc_num=8', '--batch_size=4', '--seed=3']
  r = run('launch.eval', *common, '--mode=choice', f'--data={path}/mc.jsonl')
  assert r.returncode == 0 and '| 4 | 0.500 |' in r.stdout, r.stderr[-2000:]
  r = run('launch.eval', *common, '--mode=generate', f'--data={path}/gen.jsonl',
          '--gen_length=8', '--block_length=4', '--steps=4', '--until=\\n')
  assert r.returncode == 0 and '| 4 | 0.500 |' in r.stdout, r.stderr[-2000:]
  args = ','.join(f'{k}={v}' for k, v in MODEL_ARGS.items())
  r = subprocess.run([sys.executable, '-m', 'launch.lm_eval', '--model', 'dllm_jax',
                      '--model_args',
                      f'workdir={random_workdir},{args}', '--tasks', 'dllm_mc,dllm_gen',
                      '--include_path', path, '--output_path', str(tmp_path),
                      '--log_samples'], env=_env(), cwd=str(tmp_path), text=True,
                     capture_output=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  (results,) = glob.glob(f'{tmp_path}/**/results_*.json', recursive=True)
  with open(results) as f:
    scores = json.load(f)['results']
  assert scores['dllm_mc']['acc,none'] == 0.5
  assert scores['dllm_gen']['exact_match,none'] == 0.5
  (samples,) = glob.glob(f'{tmp_path}/**/samples_dllm_mc_*.jsonl', recursive=True)
  with open(samples) as f:
    for s in map(json.loads, f):  # lm-eval writes the responses as str().
      got = [float(r[0][0]) for r in s['resps']]
      np.testing.assert_allclose(got, lls[s['doc_id']], rtol=1e-6)
