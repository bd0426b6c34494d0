"""Errors the launchers report in one line (no traceback)."""


class DllmError(Exception):
  """Base class of dllm_jax's own user-facing errors."""


class CheckpointError(DllmError):
  """No checkpoint of a workdir can be restored."""


class NonFiniteError(DllmError):
  """Training produced a non-finite loss or gradient norm and stopped."""


class WorkdirLockedError(DllmError):
  """Another run holds the workdir (or its lock cannot be created)."""


class CheckpointSaveError(DllmError):
  """A checkpoint could not be written (no space, no permission); the run ends
  and the checkpoints already there stay restorable."""


class DataError(DllmError):
  """A data source yields no usable records (every one skipped)."""

  def __str__(self) -> str:
    # Grain appends a note on its filtered traceback to the message: one line.
    return str(self.args[0]).split('\n', 1)[0] if self.args else ''
