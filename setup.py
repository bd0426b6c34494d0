"""dllm_jax: masked diffusion language models (the LLaDA family) in JAX/Flax."""

import re

from setuptools import find_packages, setup

# The lm-evaluation-harness model, as `name = module:class` (the class's own
# `@register_model` name and location; tests/test_harness.py checks both).
LM_EVAL_MODEL = 'dllm_jax = dllm_jax.evaluation.harness:DllmJaxLM'

with open('dllm_jax/version.py') as f:
  VERSION = re.search(r"__version__ = '([^']+)'", f.read()).group(1)

setup(
    name='dllm_jax',
    version=VERSION,
    description='Masked diffusion language models (LLaDA) in JAX: train, sample, evaluate.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['dllm_jax', 'dllm_jax.*', 'launch', 'launch.*']),
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
    entry_points={
        'console_scripts': ['dllm-lm-eval = launch.lm_eval:main'],
        # lm-eval's plugin group for models: a release that reads it finds
        # `--model dllm_jax` without an import of ours (lm-eval 0.4.13 does
        # not: `dllm-lm-eval` / `python -m launch.lm_eval` register it).
        'lm_eval.models': [LM_EVAL_MODEL],
    },
)
