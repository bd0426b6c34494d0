"""Errors the launchers report in one line (no traceback)."""


class DllmError(Exception):
  """Base class of dllm_jax's own user-facing errors."""


class CheckpointError(DllmError):
  """No checkpoint of a workdir can be restored."""


class NonFiniteError(DllmError):
  """Training produced a non-finite loss or gradient norm and stopped."""
