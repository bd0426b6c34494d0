"""Request batching for the server: one worker thread in front of the `Engine`,
with continuous batching at block boundaries.

Requests are queued (`submit`, bounded: a full queue raises `QueueFull`). The
worker keeps one `stepper.RowBatch` per (program settings, prompt bucket) in
flight (`Engine.group_key`: requests that differ only in floats such as the
temperature share one) and loops: admit queued requests into free rows of
their batch (a new batch for new program settings), run one block of every batch, hand each streaming row the
answer so far (`Job.on_block`), answer the rows that finished (their last
block; with the block sampler, the block where they produced EOS; or the block
where `Job.stop_check` saw a stop sequence) and free them. So a request that
arrives while others compute joins at the next block boundary, a finished
row's slot is free for a queued request at once, and a row whose client left
(`Job.cancel`) is dropped at the next one. Batches are re-packed to the compiled batch size their live rows
need (`Engine.batch_sizes`), at most `max_batch` rows each.

When nothing is in flight the worker waits for the first request, then for as
many as its last block call answered (their clients tend to come back together;
one client never waits) while they keep coming: until none arrived for
`window_s` or `max_wait_s` passed since the first. With rows in flight, after a
round that answered some, it waits up to one `window_s` for as many to arrive,
so that returning clients join the next block instead of idling through it. Requests whose settings
cannot step block by block (the prefix cache) run whole through
`Engine.generate` when taken.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Callable

import numpy as np

from dllm_jax.serving import stepper
from dllm_jax.serving.engine import Engine, Request


class QueueFull(Exception):
  """The queue holds `max_queue` requests already."""


@dataclasses.dataclass(eq=False)
class Job:
  """A queued request. `on_block(tokens)` (worker thread) gets the answer
  tokens [end] after each block but the last; `stop_check(tokens)` (worker
  thread), if given, ends the row after a block when it returns True (a stop
  sequence came: the answer is the tokens so far); `cancel()` drops the
  request (queued: never runs; running: its row is freed at the next block
  boundary)."""
  request: Request
  future: concurrent.futures.Future
  enqueued: float
  on_block: Callable[[np.ndarray], None] | None = None
  stop_check: Callable[[np.ndarray], bool] | None = None
  ids: np.ndarray | None = None
  key: tuple = ()
  sampling: object = None  # The request's settings, resolved.
  abandoned: bool = False

  def cancel(self) -> None:
    if not self.future.done():
      self.abandoned = True
      self.future.cancel()


class Batcher:
  """Collects requests and steps them in engine batches on a worker thread."""

  def __init__(self, engine: Engine, *, max_batch: int = 32, max_queue: int = 256,
               window_s: float = 0.02, max_wait_s: float | None = None):
    self.engine, self.max_batch = engine, min(max_batch, engine.max_batch)
    self.max_queue, self.window_s = max_queue, window_s
    self.max_wait_s = 10 * window_s if max_wait_s is None else max_wait_s
    self._queue: collections.deque[Job] = collections.deque()
    self._cv = threading.Condition()
    self._stopping = False
    self._live: dict[tuple, stepper.RowBatch] = {}
    # Requests answered together last, and by the latest round of block calls.
    self._answered, self._just_answered = 1, 0
    # Counters (/health): batches opened, requests that joined a running batch,
    # requests dropped because their client left, rows ended early by a stop
    # sequence, block calls and rows in them.
    self.running = 0  # Rows in flight.
    self.batches = self.joined = self.cancelled = self.stopped = 0
    self.block_calls = self.row_blocks = 0
    self._thread = threading.Thread(target=self._loop, name='batcher', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    """Finishes every queued and running request, then ends the worker."""
    with self._cv:
      self._stopping = True
      self._cv.notify_all()
    self._thread.join()

  @property
  def queued(self) -> int:
    """Requests waiting (those cancelled while queued do not count)."""
    with self._cv:
      return sum(not j.abandoned for j in self._queue)

  def submit(self, request: Request,
             on_block: Callable[[np.ndarray], None] | None = None,
             stop_check: Callable[[np.ndarray], bool] | None = None) -> Job:
    """Queues a request; its `future` gets a `Completion` (or the error)."""
    ids = self.engine.encode(request.prompt, request.chat)
    sampling = self.engine.resolve(request.sampling)
    job = Job(request, concurrent.futures.Future(), time.monotonic(), on_block,
              stop_check, ids, self.engine.group_key(sampling, len(ids)), sampling)
    with self._cv:
      if self._stopping:
        raise QueueFull('the server is shutting down.')
      if sum(not j.abandoned for j in self._queue) >= self.max_queue:
        raise QueueFull(f'the queue is full ({self.max_queue} requests waiting); '
                        'retry later.')
      self._queue.append(job)
      self._cv.notify_all()
    return job

  # --- the worker -------------------------------------------------------------------

  def _gather(self, want: int, busy: bool) -> None:
    """Waits for up to `want` requests while they keep coming, each within
    `window_s` of the last: idle, after waiting for the first, for at most
    `max_wait_s`; busy (rows in flight), for at most one window."""
    free = time.monotonic()
    while not busy and not self._queue and not self._stopping:
      self._cv.wait()
    start = max(self._queue[0].enqueued, free) if self._queue and not busy else free
    cap = start + (self.window_s if busy else self.max_wait_s)
    while len(self._queue) < want and not self._stopping:
      last = max(self._queue[-1].enqueued, free) if self._queue else free
      left = min(last + self.window_s, cap) - time.monotonic()
      if left <= 0:
        break
      self._cv.wait(left)

  def _take(self) -> tuple[dict[tuple, list[Job]], list[Job]]:
    """Queued jobs that fit now: {batch key: jobs} for free rows, and jobs to
    run whole; the rest stay queued in order."""
    with self._cv:
      if not self._live:
        self._gather(min(self.max_batch, self._answered), busy=False)
      elif self._just_answered:  # Their clients may be about to come back.
        self._gather(self._just_answered, busy=True)
      room = {k: self.max_batch - len(rb.live) for k, rb in self._live.items()}
      joins, whole, keep = {}, [], collections.deque()
      for job in self._queue:
        fits = (not stepper.steppable(job.key[0]) or
                room.setdefault(job.key, self.max_batch) > 0)
        if job.abandoned or job.future.cancelled():
          self.cancelled += 1
        elif not fits:
          keep.append(job)
        elif not job.future.set_running_or_notify_cancel():  # Cancelled just now.
          self.cancelled += 1
        elif not stepper.steppable(job.key[0]):
          whole.append(job)
        else:
          room[job.key] -= 1
          joins.setdefault(job.key, []).append(job)
      self._queue = keep
      return joins, whole

  def _admit(self, joins: dict[tuple, list[Job]]) -> None:
    for key, jobs in joins.items():
      try:
        rb = self._live.get(key)
        if rb is None:
          rb = stepper.RowBatch(self.engine, key[0], key[1],
                                self.engine.batch_bucket(len(jobs)))
          self._live[key] = rb
          self.batches += 1
        else:
          self.joined += len(jobs)
        rb.fit(len(rb.live) + len(jobs))
      except Exception as e:  # pylint: disable=broad-except
        for job in jobs:  # Requests are checked before queueing: should not happen.
          job.future.set_exception(e)
        continue
      for job in jobs:
        rb.admit(job, job.ids, job.request.seed, job.sampling)
    self.running = sum(len(rb.live) for rb in self._live.values())

  def _run_whole(self, jobs: list[Job]) -> None:
    for c in range(0, len(jobs), self.max_batch):
      chunk = jobs[c:c + self.max_batch]
      try:
        results = self.engine.generate([j.request for j in chunk])
      except Exception as e:  # pylint: disable=broad-except
        for j in chunk:  # Requests are checked before queueing: should not happen.
          j.future.set_exception(e)
      else:
        for j, r in zip(chunk, results):
          j.future.set_result(r)
        self._answered = len(chunk)

  def _step(self, key: tuple, rb: stepper.RowBatch) -> int:
    """One block of a batch: drops rows whose client left, answers finished
    rows; returns how many."""
    answered = 0
    for i in rb.live:
      if rb.jobs[i].abandoned:
        rb.leave(i)
        self.cancelled += 1
    if rb.live:
      try:  # A failure here (out of memory, say) fails this batch's rows only.
        rb.fit(len(rb.live))
        done = rb.step()
      except Exception as e:  # pylint: disable=broad-except
        for i in list(rb.live):
          rb.jobs[i].future.set_exception(e)
          rb.leave(i)
        done = []
      self.block_calls += 1
      self.row_blocks += len(done)
      for i, tokens, finished in done:
        job = rb.jobs[i]
        if not finished and self._stops(job, tokens):
          finished = True
          self.stopped += 1
        if finished:
          try:
            job.future.set_result(rb.completion(i, tokens, len(job.ids)))
          except Exception as e:  # pylint: disable=broad-except
            job.future.set_exception(e)
          rb.leave(i)
          answered += 1
        elif job.on_block is not None:
          try:
            job.on_block(tokens)
          except Exception:  # pylint: disable=broad-except
            job.cancel()  # Nobody to send to (the server's loop is gone).
    if not rb.live:
      del self._live[key]
    return answered

  @staticmethod
  def _stops(job: Job, tokens: np.ndarray) -> bool:
    """Whether a stop sequence ended the job's answer (`Job.stop_check`)."""
    if job.stop_check is None:
      return False
    try:
      return bool(job.stop_check(tokens))
    except Exception:  # pylint: disable=broad-except
      return False  # The check is the server's; the row runs to its end.

  def _loop(self) -> None:
    while True:
      joins, whole = self._take()
      self._admit(joins)
      self._run_whole(whole)
      answered = sum(self._step(key, rb) for key, rb in list(self._live.items()))
      self._just_answered = answered
      if answered:
        self._answered = answered
      self.running = sum(len(rb.live) for rb in self._live.values())
      with self._cv:
        if self._stopping and not self._queue and not self._live:
          return
