"""The layout's rules, read from the source with `ast` (nothing is imported).

Short functions: none over 60 lines in dllm_jax/, launch/ or experiments/ but
the functions named in `LONG_ALLOWED`. Imports: no circle among dllm_jax's
modules but those of `KNOWN_CIRCLES`, and every import between packages runs
down the floors of `FLOORS` (docs/architecture.md draws them).
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 60
# 'path:function' allowed past MAX_LINES: Pallas/Triton kernel bodies (none
# today), and for now the serving app's route table, which serving's own
# rework splits.
LONG_ALLOWED: frozenset[str] = frozenset()
# Packages (and top-level modules) of dllm_jax from the ground up: a module may
# import its own package or one on a lower floor. The face dllm_jax/__init__.py
# stands above them all.
FLOORS = (
    ('errors', 'version', 'ids'),
    ('parallel', 'kernels', 'tokenizers'),
    ('data', 'models'),
    ('objectives', 'sampling'),
    ('training', 'interop'),
    ('serving',),
    ('evaluation',),
)
# Imports the floors alone would allow but the design rules out.
NEVER = (('models', 'data'), ('objectives', 'data'), ('models', 'tokenizers'))
# For now, serving's one circle (a sampler program runs through the stepper,
# which drives sampler programs; a function-level import), which serving's own
# rework takes apart.
KNOWN_CIRCLES: frozenset[frozenset[str]] = frozenset()


def _sources(*tops):
  for top in tops:
    for root, _, files in os.walk(os.path.join(REPO, top)):
      for f in sorted(files):
        if f.endswith('.py'):
          path = os.path.join(root, f)
          yield os.path.relpath(path, REPO), ast.parse(open(path).read())


def _module_name(rel: str) -> str:
  name = rel[:-3].replace(os.sep, '.')
  return name[:-len('.__init__')] if name.endswith('.__init__') else name


@pytest.fixture(scope='module')
def graph() -> dict[str, set[str]]:
  """dllm_jax module -> the dllm_jax modules it imports (a name imported from a
  package is an edge to the submodule when there is one)."""
  trees = dict(_sources('dllm_jax'))
  modules = {_module_name(rel): (rel, tree) for rel, tree in trees.items()}
  edges = {}
  for name, (rel, tree) in modules.items():
    package = name if rel.endswith('__init__.py') else name.rpartition('.')[0]
    out = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        out.update(a.name for a in node.names if a.name in modules)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = package.split('.')
          base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        for a in node.names:
          target = f'{base}.{a.name}'
          out.add(target if target in modules else base)
    edges[name] = {m for m in out if m in modules and m != name}
  return edges


def test_no_function_is_longer_than_60_lines():
  long = []
  for rel, tree in _sources('dllm_jax', 'launch', 'experiments'):
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_LINES and f'{rel}:{node.name}' not in LONG_ALLOWED:
          long.append(f'{rel}:{node.lineno} {node.name} ({lines} lines)')
  assert not long, 'split these functions: ' + ', '.join(long)


def test_no_import_circle(graph):
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components.
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1 and frozenset(component) not in KNOWN_CIRCLES:
        circles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  assert not circles, f'import circles: {circles}'


def _package(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def test_imports_run_down_the_floors(graph):
  floor = {p: i for i, ps in enumerate(FLOORS) for p in ps}
  up, never = [], []
  for src, targets in graph.items():
    a = _package(src)
    for dst in targets:
      b = _package(dst)
      if not a or a == b:  # The face, or inside one package.
        continue
      assert a in floor and b in floor, f'{src} -> {dst}: give the package a floor'
      if floor[b] >= floor[a]:
        up.append(f'{src} -> {dst}')
      if (a, b) in NEVER:
        never.append(f'{src} -> {dst}')
  assert not up, f'imports that do not run down the floors: {up}'
  assert not never, f'imports the design rules out: {never}'
