"""The processes of one jax.distributed program (`--distributed`) as sweep workers.

Under `jax.distributed.initialize`, process i of P scores the contiguous example shard i of
P (partition.Worker(P, i, processes=True)) into its own shard file; the processes meet at a
barrier once each has written its shard, and process 0 merges the shards into the score
file (scores/shards.py), which equals one process's file. Only the example split changes:
every process restores the same checkpoints and scores with the same batch positions.
"""

from __future__ import annotations

from typing import Optional

from datadiet_jax.sweep.partition import Worker


def process_worker() -> Optional[Worker]:
  """Worker(process count, process index, processes=True) in a multi-process jax program,
  None in a single process (jax.distributed not initialised, or one process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return None
  return Worker(jax.process_count(), jax.process_index(), processes=True)


def barrier(name: str) -> None:
  """Blocks until every process of the program reaches the barrier `name`."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices(name)
