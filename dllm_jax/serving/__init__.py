"""Inference serving: the `Engine` (batched, bucketed, compiled sampling)."""

from dllm_jax.serving.engine import Completion, Engine, Request
