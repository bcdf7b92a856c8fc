"""Training-dynamics scores (AUM, Dyn-Unc, DUAL, TDDS) read from a run's checkpoint.

The accumulators are updated by the train step (`train/dynamics.py`, `--track_dynamics`) and
saved with every checkpoint, so a score is read at any saved step (DUAL's paper scores early
in training). Orientation: higher = harder, as every score file (`-AUM` for AUM).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from datadiet_jax.checkpoint import RunCheckpoints
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.train.dynamics import score_of, typed_dynamics


def load_dynamics_score(checkpoint_dir: str, step: int, name: str) -> np.ndarray:
  """f32[N] score `name` from the dynamics saved with the checkpoint of `step`."""
  checkpoints = RunCheckpoints(checkpoint_dir)
  try:
    dynamics = checkpoints.restore_dynamics(step, typed_dynamics)
  finally:
    checkpoints.close()
  if name not in dynamics:
    from datadiet_jax.checkpoint import NoDynamicsError  # pylint: disable=g-import-not-at-top
    raise NoDynamicsError(f"checkpoint for step {step} in {checkpoint_dir} tracks "
                          f"{sorted(dynamics)}, not {name}; train the runs with "
                          f"--track_dynamics={name} in a new --workdir")
  return score_of(name, dynamics[name])


def mean_dynamics_scores(checkpoint_dirs: Sequence[str], step: int,
                         name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean f32[N], std f32[N], per_run f32[R, N]) over runs; ScoreError if an example has
  too few visits for a score in some run (its score would be NaN)."""
  per_run = np.stack([load_dynamics_score(d, step, name) for d in checkpoint_dirs])
  unvisited = int(np.isnan(per_run).any(0).sum())
  if unvisited:
    window = "a visit" if name == "aum" else "a full window of visits"
    raise ScoreError(f"{name}@{step}: {unvisited} of {per_run.shape[1]} examples have not had "
                     f"{window} by step {step} in every run (an epoch drops its last partial "
                     "batch); score a later step, or train with a smaller --dynamics_window")
  return per_run.mean(0), per_run.std(0).astype(np.float32), per_run
