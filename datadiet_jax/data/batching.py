"""Seeded, stateless batching: the batch of every training step is a pure function of
(example ids, batch size, seed, step), so a resumed run sees exactly the same data.

Steps are 1-indexed as in the original code: step t is the t-th parameter update and
"step 0" names the initial state. An epoch is `len(example_ids) // batch_size` steps
(the remainder is dropped); every epoch draws a fresh permutation.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchSchedule:
  """Which dataset examples each training step uses.

  Attributes:
    example_ids: i32[M] dataset indices trained on (all of them, or a pruned subset).
    batch_size: examples per step.
    seed: the run's data seed (the original's `train_seed`).
  """

  example_ids: np.ndarray
  batch_size: int
  seed: int

  def __post_init__(self):
    if self.batch_size <= 0:
      raise ValueError(f"batch size must be positive, got {self.batch_size}")
    if len(self.example_ids) < self.batch_size:
      raise ValueError(f"batch size {self.batch_size} exceeds the {len(self.example_ids)} "
                       "training examples; lower --batch_size")

  @property
  def steps_per_epoch(self) -> int:
    return len(self.example_ids) // self.batch_size

  def epoch_order(self, epoch: int) -> np.ndarray:
    """i32[M]: the example ids in the order epoch `epoch` (0-indexed) visits them."""
    return _permutation(self.example_ids.tobytes(), len(self.example_ids), self.seed, epoch)

  def batch_ids(self, step: int) -> np.ndarray:
    """i32[B]: dataset indices of the examples used by training step `step` (>= 1)."""
    if step < 1:
      raise ValueError(f"training steps are 1-indexed, got {step}")
    epoch, position = divmod(step - 1, self.steps_per_epoch)
    start = position * self.batch_size
    return self.epoch_order(epoch)[start:start + self.batch_size]


@functools.lru_cache(maxsize=4)
def _permutation(ids_bytes: bytes, n: int, seed: int, epoch: int) -> np.ndarray:
  ids = np.frombuffer(ids_bytes, dtype=np.int64 if len(ids_bytes) == 8 * n else np.int32)
  rng = np.random.default_rng([seed, epoch])
  return ids[rng.permutation(n)].astype(np.int32)


def eval_batches(num_examples: int, batch_size: int):
  """Yields (start, stop) slices covering [0, num_examples) in order; the last may be short."""
  if batch_size <= 0:
    raise ValueError(f"batch size must be positive, got {batch_size}")
  for start in range(0, num_examples, batch_size):
    yield start, min(start + batch_size, num_examples)
