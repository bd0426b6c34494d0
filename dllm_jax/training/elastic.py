"""Elastic resume: what may change between a checkpoint and the run resuming it.

Parameters and optimizer state restore onto any mesh (Orbax reshards them to the
target shardings), so the device count and the data / fsdp / tensor split may
change freely; the masking noise and the data order do not depend on the mesh.

The data position is another matter: each JAX process reads its own shard of
the records (`shard_index::shard_count`) and Grain stores one iterator state per
process (`data/process_I-of-N.json`). With another process count the shards are
different sets of records, so no stored state continues the same global order;
such a resume is refused in one line (before anything is restored or moved).
The global batch size is refused by the provenance check (`provenance.py`):
with another batch every later batch would hold other examples.
"""

from __future__ import annotations

from typing import Any

import jax


def check_resume(saved: dict[str, Any]) -> None:
  """Raises a one-line ValueError if the checkpoint's data position cannot be
  continued by this run's processes. `saved` is the checkpoint's JSON meta."""
  mesh = saved.get('mesh') or {}
  was, now = mesh.get('process_count'), jax.process_count()
  if was is not None and was != now:
    raise ValueError(
        f'the checkpoint (step {saved.get("step")}) was written by {was} '
        f'process(es), this run has {now}: the data iterator state is per process '
        '(each reads its own shard of the records), so the data order cannot '
        f'continue; resume with {was} process(es) (any number of devices each), '
        'or start a new workdir from these parameters with '
        '--config.train.init_from=OLD_WORKDIR.')
