"""Splitting a sweep over K workers (`--num_workers=K --worker_index=i`).

Any launcher runs worker i = 0..K-1 (a Slurm job array, a Kubernetes indexed job, K local
processes); they share one workdir. Two kinds of split, both deterministic:

  runs      the sweep's runs in their fixed sweep order; worker i owns positions
            p with p % K == i (round robin, so each stage is balanced);
  examples  a dataset or candidate pool of N examples; worker i owns the contiguous
            shard [i*N//K, (i+1)*N//K) of example positions.

Standard library only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Worker:
  """Worker `index` of `count` (the default Worker() is the whole sweep in one process).

  processes: the workers are the processes of one jax.distributed program (--distributed,
  sweep/processes.py): they score their example shards together, meet at a barrier once
  every shard is written, and process 0 merges them.
  """

  count: int = 1
  index: int = 0
  processes: bool = False

  def __post_init__(self):
    if self.count < 1:
      raise ValueError(f"--num_workers must be >= 1, got {self.count}")
    if not 0 <= self.index < self.count:
      raise ValueError(f"--worker_index={self.index} must lie in [0, --num_workers="
                       f"{self.count}); launchers number workers 0..K-1 (Slurm: "
                       "$SLURM_ARRAY_TASK_ID with --array=0-<K-1>)")

  @property
  def label(self) -> str:
    return "" if self.count == 1 else f"worker {self.index}/{self.count}"

  def owns(self, position: int) -> bool:
    """True if the run at `position` of the sweep order is this worker's."""
    return position % self.count == self.index

  def share(self, items: Sequence[T]) -> list[T]:
    """This worker's items of the sweep order `items`."""
    return [item for p, item in enumerate(items) if self.owns(p)]

  def example_range(self, num_examples: int) -> tuple[int, int]:
    """[start, stop): this worker's contiguous shard of `num_examples` example positions."""
    return example_shard(num_examples, self.count, self.index)


def example_shard(num_examples: int, num_shards: int, index: int) -> tuple[int, int]:
  """[start, stop) of shard `index` of `num_shards` over range(num_examples); sizes differ by
  at most one and the shards tile the range in order."""
  if not 0 <= index < num_shards:
    raise ValueError(f"shard {index} does not exist among {num_shards}")
  return index * num_examples // num_shards, (index + 1) * num_examples // num_shards
