"""Orbax checkpoints of a run: the train state, the forgetting statistics and a small
JSON record, on the original Data Diet schedule.

Unlike flax's 2021 `restore_checkpoint(dir, target, step)`, which treated step=0 as
"no step" and silently restored the *latest* checkpoint (so the original's "GraNd at
initialisation" scored a trained model), `restore(step)` restores exactly `step` or
raises.

Resilience (a run may be SIGKILLed at any moment, a disk may garble a file):
- Orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it when complete,
  so a killed save leaves no half-written step (the tmp folder is ignored and replaced by
  the next save of that step).
- Every checkpoint's JSON record carries SHA-256 `checksum`s of the state, the
  forgetting statistics and the record itself; `restore` recomputes them, so silently
  flipped bytes (which Orbax/tensorstore restore without complaint) are detected.
- `restore_latest_intact` resumes from the newest checkpoint that restores and verifies;
  newer unreadable ones are moved (never deleted) to `<directory>_unreadable/<step>`
  and named in one warning line.
- A failed restore abandons its sibling tensorstore reads: they finish after Orbax
  closed its event loop ("RuntimeError: Event loop is closed") or are garbage-collected
  mid-flight ("Exception ignored in: <coroutine ...>"), and Python prints both as
  tracebacks through `sys.unraisablehook`. A wrapper of that hook drops exactly these
  two (nothing else), so they never reach the user's terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import traceback
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("datadiet_jax")
CHECKSUM_KEY = "checksum"
# Test-only hook (off unless set): "STEP:SECONDS" makes the save of STEP sleep SECONDS
# after its files are written and before Orbax renames its tmp folder into place, so a
# test can SIGKILL a process in the middle of writing a checkpoint.
SAVE_PAUSE_ENV = "DATADIET_TEST_SAVE_PAUSE"


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, corrupt or does not match the run."""


class NoDynamicsError(CheckpointError):
  """An intact checkpoint without the training-dynamics item that was asked for."""


def is_save_step(step: int, num_steps: int, save_steps: int, early_save_steps: int = 0,
                 early_step: int = 0) -> bool:
  """The original schedule: step 0; every `early_save_steps` up to `early_step`; every
  `save_steps` after it; and the last step. Non-positive intervals switch a rule off."""
  if step == 0 or step == num_steps:
    return True
  if early_save_steps > 0 and step <= early_step and step % early_save_steps == 0:
    return True
  return save_steps > 0 and step > early_step and step % save_steps == 0


@dataclasses.dataclass(frozen=True)
class Restored:
  """A restored checkpoint: its step, state, forgetting statistics (or None), record."""
  step: int
  state: Any
  forget: Any
  record: dict


class RunCheckpoints:
  """Checkpoints of one run in `directory` (one subfolder per step)."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    _filter_abandoned_read_noise()
    pause = _save_pause_from_env()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True, enable_async_checkpointing=False,
        temporary_path_class=_pausing_temporary_path(*pause) if pause else None)
    with _quiet_orbax_logs():  # it reads every step's metadata; restore reports bad ones
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, forget_stats: Any = None,
           record: Optional[dict] = None) -> None:
    record = dict(record or {})
    record[CHECKSUM_KEY] = checksums(state, forget_stats, record)
    items = {"state": ocp.args.StandardSave(state), "record": ocp.args.JsonSave(record)}
    forget, dynamics = _split(forget_stats)
    if forget is not None:
      items["forget"] = ocp.args.StandardSave(forget)
    if dynamics is not None:
      items["dynamics"] = ocp.args.StandardSave(dynamics)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, state_like: Any, forget_like: Any = None):
    """Restores exactly `step`: returns (state, forget_stats or None, record dict).

    state_like / forget_like: pytrees (or jax.ShapeDtypeStruct trees) with the structure
    to restore into. Raises CheckpointError if the step is absent or unreadable, or if
    what was read does not match the checksums recorded at save time (checkpoints saved
    before checksums existed are restored unchecked).
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
    forget_part, dynamics_part = _split(forget_like)
    if forget_part is not None:
      items["forget"] = ocp.args.StandardRestore(_abstract(forget_part))
    if dynamics_part is not None:
      self._require_dynamics(step)
      items["dynamics"] = ocp.args.StandardRestore(_abstract(dynamics_part))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax raises many types for truncated/garbled files
      raise CheckpointError(
          f"checkpoint for step {step} in {self.directory} is corrupt or does not match "
          f"this model/dataset ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
          "delete that step's folder or use a fresh --workdir") from error
    forget = restored["forget"] if forget_part is not None else None
    if dynamics_part is not None:
      forget = forget_like.replace(forget=forget, dynamics=restored["dynamics"])
    record = dict(restored["record"] or {})
    expected = record.pop(CHECKSUM_KEY, None) or {}
    if state_like is None:  # restored without a template: a tree of other paths/types than
      expected.pop("state", None)  # the saved TrainState, so its hash cannot be compared
    actual = checksums(restored["state"], forget, record)
    mismatched = [k for k in actual if k in expected and expected[k] != actual[k]]
    if mismatched:
      raise CheckpointError(
          f"checkpoint for step {step} in {self.directory} is corrupt (its "
          f"{'/'.join(mismatched)} do not match the checksum recorded when it was saved); "
          "delete that step's folder or use a fresh --workdir")
    return restored["state"], forget, record

  def restore_dynamics(self, step: int, typed) -> Any:
    """The training-dynamics item of `step` (train/dynamics.py), read as saved and turned
    into its tree by `typed(raw nested dicts)`, checked against its recorded checksum.
    Raises NoDynamicsError if the checkpoint has none, CheckpointError if it is absent or
    corrupt."""
    step = int(step)
    if step not in self.steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory} (available: "
                            f"{self.steps() or 'none'}); pick a step the runs saved")
    self._require_dynamics(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          dynamics=ocp.args.StandardRestore(), record=ocp.args.JsonRestore()))
      tree = typed(restored["dynamics"])
    except Exception as error:  # orbax raises many types for truncated/garbled files
      raise CheckpointError(
          f"checkpoint for step {step} in {self.directory}: its training-dynamics item is "
          f"corrupt ({type(error).__name__}: {str(error).splitlines()[0][:200]}); delete "
          "that step's folder or use a fresh --workdir") from error
    expected = (restored["record"] or {}).get(CHECKSUM_KEY, {}).get("dynamics")
    if expected is not None and _tree_sha256(tree) != expected:
      raise CheckpointError(
          f"checkpoint for step {step} in {self.directory} is corrupt (its dynamics do not "
          "match the checksum recorded when it was saved); delete that step's folder or use "
          "a fresh --workdir")
    return tree

  def _require_dynamics(self, step: int) -> None:
    """Raises NoDynamicsError unless the checkpoint of `step` has a dynamics item."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "dynamics")):
      raise NoDynamicsError(
          f"checkpoint for step {step} in {self.directory} holds no training-dynamics "
          "statistics (its run was trained without --track_dynamics); train the runs with "
          "--track_dynamics=<the scores> in a new --workdir")

  def restore_latest_intact(self, state_like: Any, forget_like: Any = None
                            ) -> Optional[Restored]:
    """Restores the newest checkpoint that reads back intact; None if there are none.

    Newer unreadable checkpoints are moved (not deleted) to `<directory>_unreadable/`,
    named in one warning line, so the resumed run can save those steps again. If no
    checkpoint is intact, raises the CheckpointError of the newest one (nothing moved).
    """
    with _quiet_orbax_logs():
      steps = self.steps()
    if not steps:
      return None
    bad: list[tuple[int, CheckpointError]] = []
    for step in reversed(steps):
      try:
        with _quiet_orbax_logs():
          state, forget, record = self.restore(step, state_like, forget_like)
      except NoDynamicsError:
        raise  # not corruption: nothing is moved aside
      except CheckpointError as error:
        bad.append((step, error))
        continue
      if bad:
        moved = [self._move_aside(s) for s, _ in bad]
        self._manager.reload()
        reasons = "; ".join(f"step {s}: {_reason(e)}" for s, e in bad)
        log.warning("unreadable checkpoint%s %s in %s (%s): resuming from step %d; moved "
                    "aside, not deleted, to %s", "s" if len(bad) > 1 else "",
                    ", ".join(str(s) for s, _ in bad), self.directory, reasons, step,
                    ", ".join(moved))
      return Restored(step, state, forget, record)
    newest_step, newest_error = bad[0]
    if len(steps) == 1:
      raise newest_error
    raise CheckpointError(f"{newest_error} (no older checkpoint is intact either: steps "
                          f"{steps[:-1]})") from newest_error

  def _move_aside(self, step: int) -> str:
    """Renames step's folder into `<directory>_unreadable/` (process 0 only, as Orbax's
    multi-host saves do their file-system work); returns where it goes."""
    folder = self.directory + "_unreadable"
    target, n = os.path.join(folder, str(step)), 1
    while os.path.exists(target):
      target, n = os.path.join(folder, f"{step}-{n}"), n + 1
    if jax.process_index() == 0:
      os.makedirs(folder, exist_ok=True)
      os.rename(os.path.join(self.directory, str(step)), target)
    return target

  def close(self) -> None:
    self._manager.close()


def checksums(state: Any, forget: Any = None, record: Optional[dict] = None) -> dict:
  """SHA-256 (hex) per item: {"state", "forget" (if given), "dynamics" (if tracked), "record"}.

  A tree's hash covers every leaf's path, dtype, shape and bytes; the record's covers its
  JSON (without the checksums). Leaves sharded over several hosts are hashed by their
  metadata only (a process cannot read other hosts' shards); leaves replicated over
  hosts are hashed by value.
  """
  out = {"state": _tree_sha256(state)}
  forget, dynamics = _split(forget)
  if forget is not None:
    out["forget"] = _tree_sha256(forget)
  if dynamics is not None:
    out["dynamics"] = _tree_sha256(dynamics)
  rest = {k: v for k, v in (record or {}).items() if k != CHECKSUM_KEY}
  out["record"] = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()
  return out


def _split(tracked):
  """(forgetting statistics or None, training-dynamics states or None) of the step's second
  carry: ForgetStats, or train/dynamics.Tracked (saved as two items, so forgetting reads
  back with a ForgetStats template alone)."""
  if tracked is not None and hasattr(tracked, "dynamics") and hasattr(tracked, "forget"):
    return tracked.forget, tracked.dynamics
  return tracked, None


def _tree_sha256(tree) -> str:
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    digest.update(jax.tree_util.keystr(path).encode())
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      if not leaf.is_fully_replicated:
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        continue
      # Replicated over hosts (a data-parallel state): every process holds the whole value,
      # so the hash is the one a single process computes when it restores the checkpoint.
      leaf = leaf.addressable_data(0)
    array = np.asarray(jax.device_get(leaf))  # tobytes() is C order whatever the layout
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _reason(error: Exception) -> str:
  """The cause of a CheckpointError in a few words (the text inside its parentheses)."""
  cause = error.__cause__
  if cause is None:
    return "checksum mismatch" if "checksum" in str(error) else str(error)[:120]
  return f"{type(cause).__name__}: {str(cause).splitlines()[0][:120]}" if str(
      cause) else type(cause).__name__


@contextlib.contextmanager
def _quiet_orbax_logs():
  """Orbax logs each unreadable file through absl (W/E lines); while probing checkpoints
  the one warning of restore_latest_intact says it instead."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL + 1)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def _is_abandoned_read_noise(unraisable) -> bool:
  """True for exactly the noise a failed Orbax restore leaves behind:

  - RuntimeError('Event loop is closed') raised by asyncio's `_check_closed` (a
    tensorstore read finishing after Orbax closed the restore's event loop), with no
    object attached;
  - an exception raised while the garbage collector closes an abandoned Orbax coroutine
    (the sibling reads of the one that failed).
  """
  if unraisable.object is None:
    if unraisable.exc_type is not RuntimeError or str(unraisable.exc_value) != (
        "Event loop is closed"):
      return False
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return bool(frames) and frames[-1].name == "_check_closed" and (
        os.path.dirname(frames[-1].filename) == os.path.dirname(asyncio.__file__))
  code = getattr(unraisable.object, "cr_code", None)
  return asyncio.iscoroutine(unraisable.object) and code is not None and (
      os.path.abspath(code.co_filename).startswith(_ORBAX_DIR))


_ORBAX_DIR = os.path.dirname(os.path.abspath(ocp.__file__)) + os.sep
_NOISE_FILTER_INSTALLED = False


def _filter_abandoned_read_noise() -> None:
  """Wraps sys.unraisablehook (once per process) to drop the noise of failed restores
  (see _is_abandoned_read_noise); everything else reaches the previous hook. What is
  dropped is logged at DEBUG (train.log)."""
  global _NOISE_FILTER_INSTALLED
  if _NOISE_FILTER_INSTALLED:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if _is_abandoned_read_noise(unraisable):
      log.debug("dropped the noise of an abandoned checkpoint read: %s: %s",
                unraisable.exc_type.__name__, str(unraisable.exc_value).splitlines()[:1])
      return
    previous(unraisable)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_drop_orbax_task_noise)
  _NOISE_FILTER_INSTALLED = True


def _drop_orbax_task_noise(record: logging.LogRecord) -> bool:
  """A logging filter for the `asyncio` logger: False (drop, logged at DEBUG instead) for
  "Task exception was never retrieved" about a task running an Orbax coroutine, or "Future
  exception was never retrieved" about a TensorStore read (its error carries the
  `tensorstore_spec`) — a sibling read of a failed restore, garbage-collected later
  (possibly during another restore, whose one warning it would otherwise double); True
  (keep) for everything else."""
  message = record.getMessage()
  if ((message.startswith("Task exception was never retrieved")
       and f"defined at {_ORBAX_DIR}" in message)
      or (message.startswith("Future exception was never retrieved")
          and "tensorstore_spec" in message)):
    log.debug("dropped the noise of an abandoned checkpoint read: %s",
              message.splitlines()[-1][:200])
    return False
  return True


def _save_pause_from_env() -> Optional[tuple[int, float]]:
  value = os.environ.get(SAVE_PAUSE_ENV)
  if not value:
    return None
  step, seconds = value.split(":")
  return int(step), float(seconds)


def _pausing_temporary_path(pause_step: int, seconds: float):
  """Test-only: Orbax's default (atomic-rename) tmp folder, whose finalize sleeps first
  for step `pause_step` (all files written, folder not yet renamed)."""
  base = ocp.path.atomicity.AtomicRenameTemporaryPath

  class PausingTemporaryPath(base):

    async def finalize(self, *args, **kwargs):
      if self.get_final().name == str(pause_step):
        await asyncio.sleep(seconds)
      return await super().finalize(*args, **kwargs)

  return PausingTemporaryPath


def _abstract(tree):
  # Keeps a jax.Array's sharding, so a multi-host run restores global (replicated) arrays.
  return jax.tree_util.tree_map(
      lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=getattr(x, "sharding", None)
          if isinstance(x, jax.Array) else None), tree)
