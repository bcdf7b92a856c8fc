"""Running a stage of a sweep's tasks on one worker of K.

A task is a named unit (one training run, one score computation) with `done()` and
`run()`; `run()` raises lock.RunLockedError when another live process holds it.

  run_share(tasks, worker)  this worker's share only; a task locked elsewhere is skipped
                            with a log line (its holder finishes it). For the last stage.
  run_all(tasks, worker)    this worker's share first, then every other unfinished task it
                            can lock (a worker that is not running - a Slurm array with a
                            concurrency limit, a crashed worker - cannot block the sweep),
                            polling for the ones live processes hold. For a stage later
                            stages depend on (the score runs before the scores). A dead
                            holder's lock turns stale, so this never waits forever on a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

from datadiet_jax.sweep.lock import RunLockedError, describe
from datadiet_jax.sweep.partition import Worker

log = logging.getLogger("datadiet_jax")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str                       # e.g. "score run 3", "el2n-hardest prune 50% seed 1"
  done: Callable[[], bool]
  run: Callable[[], Any]


def _try(task: Task, worker: Worker, quiet: bool = False) -> bool:
  """Runs `task` unless it is done; False if another process holds it."""
  if task.done():
    return True
  try:
    task.run()
  except RunLockedError as error:
    if not quiet:
        log.info("%s%s: skipped, %s is running it", _prefix(worker), task.name,
               describe(error.holder))
    return False
  return True


def run_share(tasks: Sequence[Task], worker: Worker = Worker()) -> list[str]:
  """Runs this worker's share; returns the names of its tasks another process holds."""
  return [task.name for task in worker.share(tasks) if not _try(task, worker)]


def run_all(tasks: Sequence[Task], worker: Worker = Worker(), poll_s: float = 5.0,
            log_every_s: float = 300.0) -> None:
  """Runs tasks until all are done: own share, then the others' (see the module doc)."""
  share = worker.share(tasks)
  order = share + [t for t in tasks if t not in share]
  waiting = [t for t in order if not _try(t, worker)]
  last_log = time.time()
  while waiting:
    if time.time() - last_log > log_every_s:
      log.info("%swaiting for %s (held by other processes)", _prefix(worker),
               ", ".join(t.name for t in waiting))
      last_log = time.time()
    time.sleep(poll_s)
    waiting = [t for t in waiting if not _try(t, worker, quiet=True)]


def missing(tasks: Sequence[Task]) -> list[str]:
  return [task.name for task in tasks if not task.done()]


def _prefix(worker: Worker) -> str:
  return f"{worker.label}: " if worker.label else ""
