"""Request batching for the server: one worker thread in front of the `Engine`.

Requests are queued (`submit`, bounded: a full queue raises `QueueFull`); the
worker waits for the first, then for as many as the last batch had (the
clients it answered tend to come back together; one client never waits) while
they keep coming: until none arrived for `window_s` (counted from the end of
the last batch at the earliest) or `max_wait_s` passed since the first. It
takes up to `max_batch` and runs them as one `Engine.generate` call, which
groups them by settings and prompt bucket.
Requests cancelled while queued (client gone, timed out) never run.

Continuous batching: `_take` is the one place where requests join a batch. A
block-diffusion sampler that can admit rows at block boundaries would call it
between blocks (and hand finished rows back) instead of once per batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time

from dllm_jax.serving.engine import Engine, Request


class QueueFull(Exception):
  """The queue holds `max_queue` requests already."""


@dataclasses.dataclass
class Job:
  request: Request
  future: concurrent.futures.Future
  enqueued: float


class Batcher:
  """Collects requests and runs them in engine batches on a worker thread."""

  def __init__(self, engine: Engine, *, max_batch: int = 32, max_queue: int = 256,
               window_s: float = 0.02, max_wait_s: float | None = None):
    self.engine, self.max_batch = engine, max_batch
    self.max_queue, self.window_s = max_queue, window_s
    self.max_wait_s = 10 * window_s if max_wait_s is None else max_wait_s
    self._queue: collections.deque[Job] = collections.deque()
    self._cv = threading.Condition()
    self._stopping = False
    self.running = 0  # Requests in the batch being computed.
    self._last_size = 1
    self.batches = 0
    self._thread = threading.Thread(target=self._loop, name='batcher', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    """Finishes every queued request, then ends the worker."""
    with self._cv:
      self._stopping = True
      self._cv.notify_all()
    self._thread.join()

  @property
  def queued(self) -> int:
    """Requests waiting (those cancelled while queued do not count)."""
    with self._cv:
      return sum(not j.future.cancelled() for j in self._queue)

  def submit(self, request: Request) -> concurrent.futures.Future:
    """Queues a request; its future gets a `Completion` (or the error)."""
    job = Job(request, concurrent.futures.Future(), time.monotonic())
    with self._cv:
      if self._stopping:
        raise QueueFull('the server is shutting down.')
      if sum(not j.future.cancelled() for j in self._queue) >= self.max_queue:
        raise QueueFull(f'the queue is full ({self.max_queue} requests waiting); '
                        'retry later.')
      self._queue.append(job)
      self._cv.notify_all()
    return job.future

  def _take(self) -> list[Job]:
    """Up to `max_batch` live jobs, after the collection window; [] at the end."""
    free = time.monotonic()
    with self._cv:
      while not self._queue and not self._stopping:
        self._cv.wait()
      if not self._queue:
        return []
      # Wait for about as many requests as the last batch answered (its clients
      # tend to come back together; a lone client does not wait at all), while
      # they keep arriving: else closed-loop clients split into groups that
      # alternate in half-empty batches.
      want = min(self.max_batch, self._last_size)
      cap = max(self._queue[0].enqueued, free) + self.max_wait_s
      while len(self._queue) < want and not self._stopping:
        last = max(self._queue[-1].enqueued, free)
        left = min(last + self.window_s, cap) - time.monotonic()
        if left <= 0:
          break
        self._cv.wait(left)
      jobs = []
      while self._queue and len(jobs) < self.max_batch:
        job = self._queue.popleft()
        if job.future.set_running_or_notify_cancel():  # False: cancelled.
          jobs.append(job)
      self.running = len(jobs)
      self._last_size = max(1, len(jobs))
      return jobs

  def _loop(self) -> None:
    while True:
      jobs = self._take()
      if not jobs:
        with self._cv:
          if self._stopping and not self._queue:
            return
        continue
      try:
        results = self.engine.generate([j.request for j in jobs])
      except Exception as e:  # pylint: disable=broad-except
        for j in jobs:  # Requests are checked before queueing: should not happen.
          j.future.set_exception(e)
      else:
        for j, r in zip(jobs, results):
          j.future.set_result(r)
      finally:
        self.running = 0
        self.batches += 1
