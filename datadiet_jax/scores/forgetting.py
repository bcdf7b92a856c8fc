"""Forgetting scores (Toneva et al. 2019) read from a run's checkpoint.

The statistics are accumulated during training (`train.forgetting`) and saved with
each checkpoint; the score is the number of forgetting events, +inf for examples never
classified correctly. The original scored forgetting at the end of training.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from datadiet_jax.checkpoint import CheckpointError, RunCheckpoints
from datadiet_jax.train.forgetting import ForgetStats, forgetting_scores, init_forget_stats


def load_forget_stats(run_dir: str, step: int, num_examples: int,
                      state_like: Optional[Any] = None) -> ForgetStats:
  """The ForgetStats saved with the checkpoint of `step` (exactly that step).

  state_like: the run's TrainState structure, or None to restore the state as saved.
  """
  checkpoints = RunCheckpoints(run_dir)
  try:
    _, stats, _ = checkpoints.restore(step, state_like, init_forget_stats(num_examples))
  finally:
    checkpoints.close()
  if stats is None:
    raise CheckpointError(f"checkpoint for step {step} in {run_dir} has no forgetting "
                          "statistics; it was saved without forget_stats")
  return stats


def load_forgetting_scores(run_dir: str, step: int, num_examples: int,
                           state_like: Optional[Any] = None) -> np.ndarray:
  """f32[N] forgetting events per example at `step`; +inf where never classified correctly."""
  return np.asarray(forgetting_scores(load_forget_stats(run_dir, step, num_examples,
                                                        state_like)), np.float32)


def mean_forgetting_scores(run_dirs: Sequence[str], step: int,
                           num_examples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean f32[N], std f32[N], per_run f32[R, N]) over runs; +inf stays +inf in the mean."""
  per_run = np.stack([load_forgetting_scores(d, step, num_examples) for d in run_dirs])
  with np.errstate(invalid="ignore"):
    std = np.where(np.isfinite(per_run).all(0), per_run.std(0), np.inf)
  return per_run.mean(0), std.astype(np.float32), per_run
