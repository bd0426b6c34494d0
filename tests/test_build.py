"""The BUILD file names the real modules and every test module."""

import ast
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_text():
  with open(os.path.join(REPO, 'BUILD')) as f:
    return f.read()


def test_build_sources_exist():
  text = _build_text()
  srcs = re.findall(r'"([\w/]+\.py)"', text)
  assert srcs
  for path in srcs:
    assert os.path.isfile(os.path.join(REPO, path)), path


def test_every_module_and_test_has_a_target():
  text = _build_text()
  named = set(re.findall(r'"([\w/]+\.py)"', text))
  tests = set(re.findall(r'^\s+"(test_\w+)",$', text, flags=re.M))
  for path in glob.glob(os.path.join(REPO, 'dllm_jax', '**', '*.py'), recursive=True):
    assert os.path.relpath(path, REPO) in named, path
  for path in glob.glob(os.path.join(REPO, 'launch', '**', '*.py'), recursive=True):
    assert os.path.relpath(path, REPO) in named, path
  for path in glob.glob(os.path.join(REPO, 'tests', 'test_*.py')):
    assert os.path.basename(path)[:-3] in tests, path


def test_build_file_is_valid_starlark_syntax():
  ast.parse(_build_text())  # Starlark used here is a subset of Python syntax.
