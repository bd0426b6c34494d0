"""Makes plain `lm_eval --model dllm_jax` work, at almost no import cost.

lm-eval 0.4 looks models up only in its own registry
(`lm_eval.api.registry.get_model`) and reads no plugin entry points, so the
name `dllm_jax` must be in that registry before the CLI asks for it. setup.py
installs `dllm_jax_lm_eval.pth` into site-packages (both `pip install .` and
`pip install -e .`); its one line imports this module at interpreter start,
which puts a finder on `sys.meta_path`. The finder does nothing until
`lm_eval.api.registry` is imported; right after that module has run, it adds
lm-eval's own lazy placeholder 'dllm_jax' -> 'dllm_jax.serving.harness:DllmJaxLM',
so jax and the harness module load only when a run asks for the model.

This module is top-level (not inside `dllm_jax`) because importing any
`dllm_jax` submodule runs the package's `__init__`, which imports jax; it
imports nothing but `sys`.
"""

import sys

REGISTRY_MODULE = 'lm_eval.api.registry'
MODEL_NAME = 'dllm_jax'
# lm-eval swaps this placeholder for the class when the harness module's
# `@register_model` runs: the string must be exactly 'module:ClassName'.
PLACEHOLDER = 'dllm_jax.serving.harness:DllmJaxLM'


def register(registry_module) -> None:
  """Adds the `dllm_jax` placeholder to lm-eval's model registry (idempotent).

  Args:
    registry_module: the executed `lm_eval.api.registry` module.
  """
  # `get_model` loads lm-eval's own model table only while the registry is
  # empty; load it first so that `--model hf` and the rest stay available.
  import lm_eval.models  # pylint: disable=g-import-not-at-top,unused-import
  registry = registry_module.model_registry
  if MODEL_NAME not in registry:
    registry.register(MODEL_NAME, target=PLACEHOLDER)


class _Loader:
  """The real loader of the registry module, followed by `register`."""

  def __init__(self, loader, finder):
    self._loader = loader
    self._finder = finder

  def __getattr__(self, name):  # get_source, get_code, ...: the real loader's.
    return getattr(self._loader, name)

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    self._loader.exec_module(module)
    if self._finder in sys.meta_path:  # Registered once the module has run.
      sys.meta_path.remove(self._finder)
    try:
      register(module)
    except Exception as e:  # pylint: disable=broad-except
      # An lm-eval whose registry changed shape must still import and run.
      import warnings  # pylint: disable=g-import-not-at-top
      warnings.warn(f'dllm_jax: could not register the lm-eval model: {e!r}')


class _Finder:
  """Wraps the loader of `lm_eval.api.registry`; finds nothing itself."""

  def find_spec(self, name, path, target=None):
    # Stays on sys.meta_path until the module has run (`_Loader`): a mere
    # `importlib.util.find_spec` or a failed import must not use it up.
    if name != REGISTRY_MODULE or name in sys.modules:
      return None
    for finder in sys.meta_path:  # The others locate it; this one wraps.
      find = None if finder is self else getattr(finder, 'find_spec', None)
      spec = find(name, path, target) if find else None
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _Loader(spec.loader, self)
        return spec
    return None


def install() -> None:
  """Registers now when lm-eval's registry is loaded, else on its import."""
  if REGISTRY_MODULE in sys.modules:
    register(sys.modules[REGISTRY_MODULE])
  elif not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
