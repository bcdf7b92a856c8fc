"""Model variables of a run's checkpoint, for scoring (one run or an ensemble of runs).

`RunCheckpoints.restore` restores exactly the step asked for (step 0 is the
initialisation, never "the latest") or raises `checkpoint.CheckpointError` listing the
available steps.
"""

from __future__ import annotations

from typing import Sequence

import jax

from datadiet_jax.checkpoint import RunCheckpoints
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.train.state import TrainState, model_variables


def load_variables(run_dir: str, step: int, state_like: TrainState) -> dict:
  """{'params', 'batch_stats'?} of the run in `run_dir` at exactly `step`.

  state_like: a TrainState (or tree of ShapeDtypeStruct) of the run's model/optimizer.
  """
  # Restore onto one device. Without a placement Orbax restores onto the devices the
  # checkpoint was saved from: a data-parallel run's variables would come back replicated
  # over its mesh, and GraNd's vmap then raises NotImplementedError.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state_like)
  checkpoints = RunCheckpoints(run_dir)
  try:
    state, _, _ = checkpoints.restore(step, target)
  finally:
    checkpoints.close()
  return model_variables(state)


def load_stacked_variables(run_dirs: Sequence[str], step: int, state_like: TrainState) -> dict:
  """The variables of several runs at `step`, stacked on a leading axis [R, ...]."""
  return stack_trees([load_variables(d, step, state_like) for d in run_dirs])
