"""Orbax checkpoints of a run: the train state, the forgetting statistics and a small
JSON record, on the original Data Diet schedule.

Unlike flax's 2021 `restore_checkpoint(dir, target, step)`, which treated step=0 as
"no step" and silently restored the *latest* checkpoint (so the original's "GraNd at
initialisation" scored a trained model), `restore(step)` restores exactly `step` or
raises.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, corrupt or does not match the run."""


def is_save_step(step: int, num_steps: int, save_steps: int, early_save_steps: int = 0,
                 early_step: int = 0) -> bool:
  """The original schedule: step 0; every `early_save_steps` up to `early_step`; every
  `save_steps` after it; and the last step. Non-positive intervals switch a rule off."""
  if step == 0 or step == num_steps:
    return True
  if early_save_steps > 0 and step <= early_step and step % early_save_steps == 0:
    return True
  return save_steps > 0 and step > early_step and step % save_steps == 0


class RunCheckpoints:
  """Checkpoints of one run in `directory` (one subfolder per step)."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, forget_stats: Any = None,
           record: Optional[dict] = None) -> None:
    items = {"state": ocp.args.StandardSave(state), "record": ocp.args.JsonSave(record or {})}
    if forget_stats is not None:
      items["forget"] = ocp.args.StandardSave(forget_stats)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, state_like: Any, forget_like: Any = None):
    """Restores exactly `step`: returns (state, forget_stats or None, record dict).

    state_like / forget_like: pytrees (or jax.ShapeDtypeStruct trees) with the structure
    to restore into. Raises CheckpointError if the step is absent or unreadable.
    """
    if step is None or int(step) < 0:
      raise CheckpointError(f"a checkpoint step must be a non-negative int, got {step!r}")
    step = int(step)
    available = self.steps()
    if step not in available:
      raise CheckpointError(
          f"no checkpoint for step {step} in {self.directory} (available: "
          f"{available or 'none'}); train with a schedule that saves it or pick another step")
    items = {"state": ocp.args.StandardRestore(_abstract(state_like)),
             "record": ocp.args.JsonRestore()}
    if forget_like is not None:
      items["forget"] = ocp.args.StandardRestore(_abstract(forget_like))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax raises many types for truncated/garbled files
      raise CheckpointError(
          f"checkpoint for step {step} in {self.directory} is corrupt or does not match "
          f"this model/dataset ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
          "delete that step's folder or use a fresh --workdir") from error
    forget = restored["forget"] if forget_like is not None else None
    return restored["state"], forget, dict(restored["record"] or {})

  def close(self) -> None:
    self._manager.close()


def _abstract(tree):
  return jax.tree_util.tree_map(
      lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
          x.shape, x.dtype), tree)
