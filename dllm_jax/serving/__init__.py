"""Inference serving: the `Engine` (batched, bucketed, compiled sampling)."""

from dllm_jax.serving.engine import Engine
from dllm_jax.serving.records import Completion, Request
