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

Batches in flight share the worker by compute time: each round steps the
batch that has had the least (`RowBatch.service`, seconds of block calls; a
new batch starts one longest block call ahead of the least served, or where
the last batch of its settings ended if that is later), so a
batch of short, cheap blocks keeps its pace beside one of long blocks instead
of waiting for each of them (with equal costs this is round robin).

When nothing is in flight the worker waits for the first request, then for as
many as its last block call answered (their clients tend to come back together;
one client never waits) while they keep coming: until none arrived for
`window_s` or `max_wait_s` passed since the first. With rows in flight, after a
round that answered some, it waits up to one `window_s` for as many to arrive,
so that returning clients join the next block instead of idling through it.

Compilation never holds the loop: a batch that needs a program not yet built
(new settings, a prompt or length bucket, a batch size, a re-packing) has it
built on a compile thread (`Programs.prepare`) while the loop keeps stepping
the batches whose programs exist; its requests wait in the queue until it is
ready (a batch that would shrink keeps its size meanwhile). Requests of a
sampler that cannot step block by block (`SamplerProgram.steppable` False;
the built-in ones all step, the prefix cache with a program per block index)
run whole through `Engine.generate` on a thread of their own. A request's `max_tokens` ends its
row at the block boundary that reached it (its answer is cut there).
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
from dllm_jax.serving.engine import Engine
from dllm_jax.serving.records import Request


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

  @property
  def limit(self) -> int | None:
    """The answer tokens the request wants (None: all)."""
    return self.request.max_tokens

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
    # Batch keys whose programs compile on `_compiler` (their requests wait).
    self._compiling: set = set()
    self._failed: dict = {}  # Batch keys whose programs failed to compile: why.
    self._served: dict = {}  # Batch keys that ended lately: their service then.
    self._compiler = concurrent.futures.ThreadPoolExecutor(1, 'compile')
    self._whole = concurrent.futures.ThreadPoolExecutor(1, 'whole')
    # Requests answered together last, and by the latest round of block calls.
    self._answered, self._just_answered = 1, 0
    # Counters (/health): batches opened, requests that joined a running batch,
    # requests dropped because their client left, rows ended early by a stop
    # sequence, block calls and rows in them.
    self.running = 0  # Rows in flight.
    self.batches = self.joined = self.cancelled = self.stopped = 0
    self.block_calls = self.row_blocks = 0
    self.compiles = 0  # Programs built on the compile thread.
    self._thread = threading.Thread(target=self._loop, name='batcher', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    """Finishes every queued and running request, then ends the worker."""
    with self._cv:
      self._stopping = True
      self._cv.notify_all()
    self._thread.join()
    self._whole.shutdown(wait=True)
    self._compiler.shutdown(wait=True)

  @property
  def compiling(self) -> set:
    """Batch keys whose programs compile now (their requests wait)."""
    return set(self._compiling)

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
    while not busy and not self._ready() and not self._stopping:
      self._cv.wait()
    start = max(self._queue[0].enqueued, free) if self._queue and not busy else free
    cap = start + (self.window_s if busy else self.max_wait_s)
    while len(self._queue) < want and not self._stopping:
      last = max(self._queue[-1].enqueued, free) if self._queue else free
      left = min(last + self.window_s, cap) - time.monotonic()
      if left <= 0:
        break
      self._cv.wait(left)

  def _ready(self) -> bool:
    """Whether a queued request could be taken (no program it needs compiling)."""
    return any(j.key not in self._compiling for j in self._queue)

  def _take(self) -> tuple[dict[tuple, list[Job]], list[Job]]:
    """Queued jobs that fit now: {batch key: jobs} for free rows, and jobs to
    run whole; the rest stay queued in order (among them those whose batch
    waits for a program: `_room`)."""
    with self._cv:
      if not self._live:
        self._gather(min(self.max_batch, self._answered), busy=False)
      elif self._just_answered:  # Their clients may be about to come back.
        self._gather(self._just_answered, busy=True)
      want: dict = {}
      for job in self._queue:
        if (stepper.steppable(job.key[0]) and not job.abandoned and
            job.key not in self._failed):
          want[job.key] = want.get(job.key, 0) + 1
      room = {k: self._room(k, n) for k, n in want.items()}
      joins, whole, keep = {}, [], collections.deque()
      for job in self._queue:
        steps = stepper.steppable(job.key[0])
        if job.abandoned or job.future.cancelled():
          self.cancelled += 1
        elif steps and room.get(job.key, 0) <= 0 and job.key not in self._failed:
          keep.append(job)
        elif not job.future.set_running_or_notify_cancel():  # Cancelled just now.
          self.cancelled += 1
        elif job.key in self._failed:
          job.future.set_exception(self._failed[job.key])
        elif not steps:
          whole.append(job)
        else:
          room[job.key] -= 1
          joins.setdefault(job.key, []).append(job)
      self._queue = keep
      self._failed.clear()  # Requests that come later try again.
      return joins, whole

  def _room(self, key: tuple, n: int) -> int:
    """How many of n queued requests of batch `key` may join it now: up to
    `max_batch` rows if the programs of the size they need are built, else
    those that fit its present size (and the missing programs compile)."""
    rb = self._live.get(key)
    b, live = (rb.b, len(rb.live)) if rb is not None else (0, 0)
    room = self.max_batch - live
    new_b = self.engine.batch_bucket(live + min(n, room))
    if new_b == b or self._compile(key, stepper.needs(self.engine, key[0], key[1], b, new_b)):
      return room
    return b - live

  def _compile(self, key: tuple, needs) -> bool:
    """Whether the programs `needs` [(key, build)] of batch `key` are built;
    if not, builds them on the compile thread (the batch's requests beyond its
    present size wait until the last is done) and returns False."""
    missing = [(k, build) for k, build in needs if not self.engine.programs.has(k)]
    if not missing:
      return True
    if key in self._compiling:
      return False
    self._compiling.add(key)
    futures = [self.engine.programs.prepare(k, build, self._compiler) for k, build in missing]
    left = [len(futures)]

    def done(future):
      with self._cv:
        self.compiles += 1
        if future.exception() is not None:  # Its waiting requests fail (`_take`).
          self._failed[key] = future.exception()
        left[0] -= 1
        if not left[0]:
          self._compiling.discard(key)
          self._cv.notify_all()
    for f in futures:
      f.add_done_callback(done)
    return False

  def _admit(self, joins: dict[tuple, list[Job]]) -> None:
    for key, jobs in joins.items():
      try:
        rb = self._live.get(key)
        if rb is None:
          rb = stepper.RowBatch(self.engine, key[0], key[1],
                                self.engine.batch_bucket(len(jobs)))
          # It starts one longest block call ahead of the least served batch
          # (a short request runs through instead of waiting out each long
          # block), but not before where the last batch of its key ended (the
          # credit is had once, not by every request of a steady client).
          ahead = min((b.service for b in self._live.values()), default=0.0) - max(
              (b.last_call for b in self._live.values()), default=0.0)
          rb.service = max(ahead, self._served.pop(key, ahead))
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
    """Runs jobs whole (`Engine.generate`) on their own thread."""
    for c in range(0, len(jobs), self.max_batch):
      self._whole.submit(self._generate, jobs[c:c + self.max_batch])

  def _generate(self, chunk: list[Job]) -> None:
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
        if job.limit is not None and len(tokens) >= job.limit:
          tokens, finished = tokens[:job.limit], True
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
      self._served[key] = rb.service
      while len(self._served) > 64:  # The most recent keys' only.
        del self._served[next(iter(self._served))]
    return answered

  def _shrink(self, key: tuple, rb: stepper.RowBatch) -> None:
    """Re-packs a batch whose rows left to the smaller compiled size they
    need, once its programs are built (until then it keeps its size)."""
    new_b = self.engine.batch_bucket(max(1, len(rb.live)))
    if new_b != rb.b:
      with self._cv:
        ready = self._compile(key, stepper.needs(self.engine, key[0], key[1], rb.b, new_b))
      if ready:
        rb.fit(len(rb.live))

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
      answered = 0
      if self._live:  # The batch that has had the least compute time steps.
        key, rb = min(self._live.items(), key=lambda kv: kv[1].service)
        start = time.perf_counter()
        answered = self._step(key, rb)
        rb.last_call = time.perf_counter() - start
        rb.service += rb.last_call
      self._just_answered = answered
      if answered:
        self._answered = answered
      self.running = sum(len(rb.live) for rb in self._live.values())
      with self._cv:
        if self._stopping and not self._queue and not self._live:
          return
