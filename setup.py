"""dllm_jax: masked diffusion language models (the LLaDA family) in JAX/Flax."""

import base64
import glob
import hashlib
import os
import re
import zipfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 64 (PEP 660); older ones install editable without the hook.
  from setuptools.command.editable_wheel import editable_wheel
except ImportError:
  editable_wheel = None

# `lm_eval --model dllm_jax`: lm-eval has no plugin lookup, so this .pth file in
# site-packages imports a tiny top-level module at interpreter start that
# registers the model lazily when lm-eval's registry loads (see its docstring).
PTH_NAME = 'dllm_jax_lm_eval.pth'
# Guarded: a moved or half-removed install must not print a traceback at every
# interpreter start.
PTH_LINE = (b"import importlib.util as _u; _u.find_spec('dllm_jax_lm_eval_hook') and "
            b"__import__('dllm_jax_lm_eval_hook').install()\n")

with open('dllm_jax/__init__.py') as f:
  VERSION = re.search(r"__version__ = '([^']+)'", f.read()).group(1)


class BuildPyWithPth(build_py):
  """`pip install .`: the wheel's root (site-packages) gets the .pth file."""

  def run(self):
    super().run()
    with open(os.path.join(self.build_lib, PTH_NAME), 'wb') as f:
      f.write(PTH_LINE)


def _wheels(folder) -> dict[str, int]:
  return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(folder, '*.whl'))}


def _add_to_wheel(path: str) -> None:
  """Rewrites the wheel at `path` with the .pth file and its RECORD line."""
  digest = base64.urlsafe_b64encode(hashlib.sha256(PTH_LINE).digest()).rstrip(b'=')
  record = f'{PTH_NAME},sha256={digest.decode()},{len(PTH_LINE)}\n'.encode()
  with zipfile.ZipFile(path) as z:
    entries = [(info, z.read(info)) for info in z.infolist()]
  if any(info.filename == PTH_NAME for info, _ in entries):
    return
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr(PTH_NAME, PTH_LINE)
    for info, data in entries:
      z.writestr(info, data + record if info.filename.endswith('.dist-info/RECORD') else data)


CMDCLASS = {'build_py': BuildPyWithPth}
if editable_wheel is not None:

  class EditableWheelWithPth(editable_wheel):
    """`pip install -e .`: setuptools writes the editable wheel without
    build_lib's files; the .pth file is added to the wheel it wrote."""

    def run(self):
      before = _wheels(self.dist_dir)
      super().run()
      for path, stamp in _wheels(self.dist_dir).items():
        if before.get(path) != stamp:  # Written by this run.
          _add_to_wheel(path)

  CMDCLASS['editable_wheel'] = EditableWheelWithPth


setup(
    name='dllm_jax',
    version=VERSION,
    description='Masked diffusion language models (LLaDA) in JAX: train, sample, evaluate.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['dllm_jax', 'dllm_jax.*', 'launch', 'launch.*']),
    py_modules=['dllm_jax_lm_eval_hook'],
    cmdclass=CMDCLASS,
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.10.2',
        'flax>=0.12.8',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12.4',
        'grain>=0.2.18',
        'tensorflow-datasets>=4.9.10',
        'importlib_resources',  # tfds without TensorFlow.
        'chex>=0.1.92',
        'absl-py>=2.0',
        'ml-collections>=1.1.0',
        'tensorboardX>=2.6',
        'safetensors>=0.4',  # LLaDA Hugging Face weights.
        'tokenizers>=0.20',  # A local tokenizer.json (LLaDA's).
        'sentencepiece>=0.2',  # SentencePiece tokenizers (and training them).
        'jinja2>=3.1',  # Chat templates, rendered in Jinja's sandbox.
        'fastapi>=0.115',  # launch.serve: the OpenAI-compatible HTTP API.
        'uvicorn>=0.30',
        'numpy>=1.26',
    ],
    extras_require={
        # matplotlib: the experiments' plots and the notebook test; hypothesis:
        # the config checks' and the fuzzed inputs' property tests; openai,
        # httpx: tests/test_serve.py talks to the real server; lm-eval: the
        # harness model's tests.
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'matplotlib>=3.8', 'hypothesis>=6.100', 'openai>=1.40',
                 'httpx>=0.27', 'lm-eval>=0.4.13'],
        # lm-evaluation-harness (model `dllm_jax`; needs no torch).
        'eval': ['lm-eval>=0.4.13'],
        # The independent PyTorch LLaDA forward of tests/test_interop.py (CPU build).
        'torch': ['torch==2.13.0'],
    },
    entry_points={'console_scripts': ['dllm-lm-eval = launch.lm_eval:main']},
)
