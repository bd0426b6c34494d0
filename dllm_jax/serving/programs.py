"""Compiled programs by key, at most `limit` kept (least recently used dropped).

An engine compiles one program per (program settings, prompt bucket, batch
size) it meets (and the server one per re-packing); a bound keeps requests
with ever new settings from growing memory without limit. A dropped program
compiles again when asked for: keep `limit` above what a warm server steps
through (each live batch's program is asked for at every block), or it
recompiles while serving. `prepare` builds a program on an executor (the
batcher's compile thread), so that serving never waits for a compile.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
import time
from typing import Callable, Hashable

log = logging.getLogger('dllm_jax.serving')


# Seconds every off-loop compile waits before it builds: stands in for a large
# model's compile time on a tiny one (the tests that check what the server does
# while a program compiles set it; 0 in use).
COMPILE_DELAY_S = float(os.environ.get('DLLM_SERVE_COMPILE_DELAY_S', '0') or 0)

class Programs:
  """`get(key, build)`: the program under `key`, built by `build()` unless it
  is among the `limit` most recently used. Thread-safe; a build runs outside
  the lock (two threads may build one key; the first kept wins)."""

  def __init__(self, limit: int):
    if limit < 1:
      raise ValueError(f'max_compiled={limit} must be at least 1.')
    self.limit = limit
    self.compiles = 0  # Programs built (one dropped and built again counts twice).
    self.dropped = 0  # Programs dropped past `limit`.
    self._kept: collections.OrderedDict = collections.OrderedDict()
    self._building: dict = {}  # Keys being built by `prepare`: their futures.
    self._lock = threading.RLock()

  def __len__(self) -> int:
    return len(self._kept)

  def has(self, key: Hashable) -> bool:
    """Whether the program under `key` is built (and kept)."""
    with self._lock:
      return key in self._kept

  def prepare(self, key: Hashable, build: Callable[[], object],
              executor: concurrent.futures.Executor) -> concurrent.futures.Future:
    """Builds the program under `key` on `executor` (once: a build in flight
    is shared); the future's result is the program. A failed build is logged
    and retried by the next `prepare` (or `get`)."""
    with self._lock:
      if key in self._kept:
        done = concurrent.futures.Future()
        done.set_result(self._kept[key])
        return done
      if key in self._building:
        return self._building[key]

      def run():
        try:
          if COMPILE_DELAY_S:  # A large model's compile time, simulated.
            time.sleep(COMPILE_DELAY_S)
          return self.get(key, build)
        except Exception:  # pylint: disable=broad-except
          log.exception('compiling a program failed')
          raise
        finally:
          with self._lock:
            self._building.pop(key, None)
      future = self._building[key] = executor.submit(run)
      return future

  def get(self, key: Hashable, build: Callable[[], object]):
    with self._lock:
      if key in self._kept:
        self._kept.move_to_end(key)
        return self._kept[key]
    program = build()
    with self._lock:
      if key not in self._kept:
        self._kept[key] = program
        self.compiles += 1
      self._kept.move_to_end(key)
      while len(self._kept) > self.limit:
        self._kept.popitem(last=False)
        self.dropped += 1
        (log.warning if self.dropped == 1 else log.info)(
            'dropped the least recently used compiled program (max_compiled=%d; '
            '%d dropped so far).', self.limit, self.dropped)
      return self._kept[key]
