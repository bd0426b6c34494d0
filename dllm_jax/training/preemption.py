"""Knowing when to stop: SIGTERM on one host, JAX's preemption sync point on many."""

from __future__ import annotations

import signal
import sys

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """`should_stop(step)` turns true once the job is asked to stop.

  Single process: after SIGTERM (or SIGINT, Ctrl-C, when `catch_interrupt`; a
  second Ctrl-C raises KeyboardInterrupt as usual). Several
  processes: at JAX's preemption sync point, so every host stops after the same
  step (`jax.distributed.initialize` starts the preemption service).
  """

  def __init__(self, catch_interrupt: bool = False):
    self.signal_name: str | None = None
    self._previous = {}
    if jax.process_count() > 1:
      return  # JAX's preemption notifier owns SIGTERM; a Python handler would hide it.
    for sig in (signal.SIGTERM,) + ((signal.SIGINT,) if catch_interrupt else ()):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: no handler, rely on sync points.
        pass

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signal_name is not None:
      raise KeyboardInterrupt  # Asked twice: stop now, without the save.
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT:  # Say it: the step (or a compile) may take a while.
      print('Ctrl-C: saving after this step, then stopping (Ctrl-C again stops at '
            'once, without saving).', file=sys.stderr, flush=True)

  def should_stop(self, step: int) -> bool:
    """Cheap enough to call after every step (no host sync on one process)."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    # JAX's coordination service turns a SIGTERM on any host into a sync point
    # that every host reaches at the same step.
    if multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = self.signal_name or 'preemption notice'
      return True
    return False

  def restore(self) -> None:
    """Puts the previous signal handlers back."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
