"""Elastic resume: what may change between a checkpoint and the run resuming it.

Parameters and optimizer state restore onto any mesh (Orbax reshards them to the
target shardings), so the device count and the data / fsdp / tensor split may
change freely; the masking noise and the data order do not depend on the mesh.

The process count may change too: the data position is one Grain iterator
state per data shard, and the shards are fixed when the run starts
(`data/shards.py`), so a run resumed on another process count re-derives which
shards each process reads and restores their states. The checkpoint's `data`
item holds `shard_S-of-N.json` files (`process_S-of-N.json` in checkpoints
written before shards: then shard = process), written by the process that feeds
the shard's first row. What cannot continue is refused in one line: a global
batch that the shards or processes do not divide, or a data item without the
state of a shard this process reads. The global batch size itself is refused by
the provenance check (`provenance.py`): with another batch every later batch
would hold other examples.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from dllm_jax.data import shards

_STATE_FILE = re.compile(r'(shard|process)_(\d+)-of-(\d+)\.json')


def saved_shard_count(saved: dict[str, Any]) -> int:
  """The data shard count of the run that wrote a checkpoint (its JSON meta):
  recorded since shards exist, before that its process count."""
  return int(saved.get('data_shards') or
             (saved.get('mesh') or {}).get('process_count') or 1)


def check_resume(saved: dict[str, Any], batch_size: int) -> None:
  """Raises a one-line ValueError if this run's processes cannot continue the
  checkpoint's data position with global batch `batch_size`. `saved`: the
  checkpoint's JSON meta."""
  try:
    shards.shard_plan(batch_size, saved_shard_count(saved), jax.process_index(),
                      jax.process_count())
  except ValueError as e:
    raise ValueError(f'cannot continue the data order of the checkpoint (step '
                     f'{saved.get("step")}) on {jax.process_count()} process(es): '
                     f'{e}') from None


class ShardStatesHandler(grain.checkpoint.CheckpointHandler):
  """Orbax handler of a `shards.ShardedIterator`'s position: one JSON file per
  data shard, each written by the process that saves it."""

  def save(self, directory, item=None, args=None):
    del item
    state = args.state
    for shard, shard_state in state['shards'].items():
      path = directory / f'shard_{shard}-of-{state["shard_count"]}.json'
      path.write_text(json.dumps(shard_state, indent=4))

  def restore(self, directory, item=None, args=None):
    del item
    found: dict[int, dict[int, Any]] = {}
    for path in directory.iterdir():
      m = _STATE_FILE.fullmatch(path.name)
      if m:
        found.setdefault(int(m[3]), {})[int(m[2])] = path
    if len(found) != 1:
      raise ValueError(f'the data position in {directory} has iterator states of '
                       f'{len(found)} shard counts ({sorted(found)}); expected one.')
    (count, files), = found.items()
    args.item.set_state({'shard_count': count, 'shards': {
        s: json.loads(f.read_text()) for s, f in files.items()}})
    return args.item


@ocp.args.register_with_handler(ShardStatesHandler, for_save=True)
@dataclasses.dataclass
class ShardStatesSave(ocp.args.CheckpointArgs):
  """`state`: a `ShardedIterator.get_state()`, taken when the save starts."""
  state: dict[str, Any]


@ocp.args.register_with_handler(ShardStatesHandler, for_restore=True)
@dataclasses.dataclass
class ShardStatesRestore(ocp.args.CheckpointArgs):
  """`item`: the `ShardedIterator` to move to the saved position."""
  item: Any
