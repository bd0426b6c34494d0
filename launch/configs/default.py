"""Default run: the tiny diffusion LM on the built-in corpus (stdlib sources).

On a 2-core CPU it trains in about 8.5 minutes (2,500 steps of 64 x 64 tokens,
~10M tokens) and its samples show Python's shape (indentation, keywords).
Override any key: --config.train.steps=200 --config.model.preset=small

Every key and its default is a field of the typed sections
(dllm_jax/training/sections.py, the one place defaults are written; `python -m
dllm_jax.training.sections` prints them with what each allows).
"""

import ml_collections

from dllm_jax.training.config_dict import config_dict


def get_config() -> ml_collections.ConfigDict:
  return config_dict()
