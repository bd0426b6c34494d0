"""Data shards that outlive the process count: what makes elastic resume exact.

A run's records are split into S data shards when it starts (S = the process
count then). Shard s is its own deterministic Grain pipeline (records
`s::S`, shuffled with the run's seed) yielding B / S rows per step, and the
global batch of every step is the shards' rows in shard order. So the data
position of a run is S Grain iterator states, one per shard, and it does not
depend on which process reads which shard.

With P processes, process p feeds global rows [p B/P, (p + 1) B/P) and reads
whichever shards hold them (`shard_plan`): its own shard when P = S (the usual
case, exactly the per-process sharding of `pipeline.py`), several when P < S
(2 -> 1 processes: the one process reads both shards), or a slice of one when
P > S (1 -> 2: both processes read shard 0, each keeping its half of the rows).
Resuming on another process count is then re-deriving each process's plan
and restoring the states of the shards it reads; the batches and their order
are those of the uninterrupted run.

Why not re-derive the position from the step alone: with packing, how many
records a batch holds depends on the documents' lengths, and bad records are
skipped, so the step says where a shard is only after replaying it from the
start. The saved per-shard states say it directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class ShardSlice:
  """Rows [start, stop) of shard `shard`'s per-step batch."""
  shard: int
  start: int
  stop: int


def shard_plan(batch_size: int, shard_count: int, process_index: int,
               process_count: int) -> list[ShardSlice]:
  """The shard rows process `process_index` of `process_count` feeds.

  The global batch [B] is shard 0's rows, then shard 1's, ... (B / S each);
  process p's part is global rows [p B/P, (p + 1) B/P), returned as slices of
  the shards that hold them, in order. Raises a one-line ValueError when B is
  not a multiple of S or of P.
  """
  if shard_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'bad shard plan: {shard_count} shard(s), process '
                     f'{process_index} of {process_count}.')
  for n, what in ((shard_count, 'data shard(s) the run started with'),
                  (process_count, 'process(es)')):
    if batch_size % n:
      raise ValueError(f'global batch {batch_size} is not a multiple of the {n} '
                       f'{what}; each needs an equal part of every batch.')
  rows, per_shard = batch_size // process_count, batch_size // shard_count
  lo, hi = process_index * rows, (process_index + 1) * rows
  return [ShardSlice(s, max(lo, s * per_shard) - s * per_shard,
                     min(hi, (s + 1) * per_shard) - s * per_shard)
          for s in range(lo // per_shard, -(-hi // per_shard))]


def owned_shards(plan: list[ShardSlice]) -> list[int]:
  """The shards whose state this process saves: those whose first row it
  feeds (a shard read by several processes is saved once)."""
  return [piece.shard for piece in plan if piece.start == 0]


class ShardedIterator(Iterator[dict[str, np.ndarray]]):
  """This process's batches [B / P, ...] read from the run's data shards.

  `make_shard(shard_index, shard_count, rows)` builds shard's Grain dataset of
  `rows`-row batches (flat dicts of arrays, batch axis first).
  `get_state` / `set_state` hold the states of the shards this process reads;
  `set_state` with another shard count (a checkpoint of a run that started on
  another process count) rebuilds the shards first.
  """

  def __init__(self, make_shard: Callable[[int, int, int], Any], *,
               batch_size: int, process_index: int, process_count: int,
               shard_count: int | None = None):
    self._make, self.batch_size = make_shard, batch_size
    self.process_index, self.process_count = process_index, process_count
    self._build(shard_count or process_count)

  def _build(self, shard_count: int) -> None:
    self.shard_count = shard_count
    self.plan = shard_plan(self.batch_size, shard_count, self.process_index,
                           self.process_count)
    rows = self.batch_size // shard_count
    self._iters = {p.shard: iter(self._make(p.shard, shard_count, rows))
                   for p in self.plan}

  def __next__(self) -> dict[str, np.ndarray]:
    pieces = []
    for p in self.plan:
      batch = next(self._iters[p.shard])
      whole = p.start == 0 and p.stop == self.batch_size // self.shard_count
      pieces.append(batch if whole else
                    {k: v[p.start:p.stop] for k, v in batch.items()})
    if len(pieces) == 1:  # One process, one shard: the batch as Grain made it.
      return pieces[0]
    return {k: np.concatenate([b[k] for b in pieces]) for k in pieces[0]}

  def get_state(self) -> dict[str, Any]:
    """{'shard_count': S, 'shards': {shard: its Grain state}} of the shards this
    process saves (`owned_shards`)."""
    return {'shard_count': self.shard_count,
            'shards': {s: self._iters[s].get_state() for s in owned_shards(self.plan)}}

  def set_state(self, state: dict[str, Any]) -> None:
    """Moves to `state` (`get_state`'s form; 'shards' must hold at least the
    shards this process reads). Raises a one-line ValueError naming missing ones."""
    if state['shard_count'] != self.shard_count:
      self._build(int(state['shard_count']))
    shards = {int(s): v for s, v in state['shards'].items()}
    missing = sorted({p.shard for p in self.plan} - set(shards))
    if missing:
      raise ValueError(f'the data position has no state for shard(s) {missing} of '
                       f'{self.shard_count}, which this process reads; it cannot '
                       'continue the same data order.')
    for s, it in self._iters.items():
      it.set_state(shards[s])
      it.start_prefetch()
