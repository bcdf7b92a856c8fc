"""TensorBoard scalars of a run, written beside its metrics.csv (no TensorFlow needed).

The training loop calls `MetricsWriter.write_row` wherever it appends a row to
metrics.csv, so `<run dir>/tensorboard/` holds the same numbers as the CSV:

  train/loss, train/accuracy   running means over the steps since the previous row
  test/loss, test/accuracy     on the whole test set
  lr, epoch, elapsed_s         as in metrics.csv
  examples_kept                examples the run trains on (its subset's size)

Values that are not finite (the step-0 row has no train loss) are left out.

Resuming: a resumed run drops the CSV rows after its checkpoint and recomputes them
bit-identically. `open_run_writer(..., rows=...)` therefore starts a new event file that
re-writes the kept rows, then deletes the older event files, so the event files never hold
a step twice (TensorBoard would show both the stale and the new point otherwise). The new
file also begins with a SessionLog.START at step 0 (tensorboardX's `purge_step`), which
tells TensorBoard's reader to drop every point it read from older files, so even a stale
file that survives (the process died between writing and deleting, or a copy) is hidden.

Writer: tensorboardX (protobuf only). View with `tensorboard --logdir <workdir>`.
"""

from __future__ import annotations

import glob
import itertools
import math
import os
from typing import Mapping, Optional, Sequence

TENSORBOARD_DIR = "tensorboard"
_COUNTER = itertools.count()
# metrics.csv column -> TensorBoard tag.
ROW_TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
            "test_loss": "test/loss", "test_accuracy": "test/accuracy", "lr": "lr",
            "epoch": "epoch", "elapsed_s": "elapsed_s"}


class MetricsWriter:
  """Scalars -> one TensorBoard event file in `logdir` (created)."""

  def __init__(self, logdir: str, purge_step: Optional[int] = None, suffix: str = ""):
    from tensorboardX import SummaryWriter  # imported here: only runs that write need it
    os.makedirs(logdir, exist_ok=True)
    self.logdir = logdir
    before = set(event_files(logdir))
    # The event file's name starts with the creation second; the suffix (the first step,
    # the process and a per-process counter) keeps two files made in the same second apart
    # (tensorboardX would overwrite the first) and in step order.
    self._writer = SummaryWriter(logdir, purge_step=purge_step, flush_secs=30,
                                 filename_suffix=f"{suffix}.{os.getpid()}.{next(_COUNTER)}")
    new = sorted(set(event_files(logdir)) - before)
    self.event_file = new[0] if new else None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for tag, value in scalars.items():
      if value is not None and math.isfinite(float(value)):
        self._writer.add_scalar(tag, float(value), global_step=int(step))

  def write_row(self, row: Mapping[str, float], **extra: float) -> None:
    """One metrics.csv row (its 'step' is the global step) plus extra scalars."""
    scalars = {tag: row[key] for key, tag in ROW_TAGS.items() if key in row}
    self.write_scalars(int(row["step"]), {**scalars, **extra})

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class NullWriter:
  """Writes nothing (--tensorboard=false)."""

  event_file = None

  def write_scalars(self, step, scalars) -> None:
    del step, scalars

  def write_row(self, row, **extra) -> None:
    del row, extra

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def event_files(logdir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))


def open_run_writer(run_dir: str, enabled: bool = True, rows: Sequence[Mapping] = (),
                    **extra: float):
  """The writer of a run starting (rows=()) or resuming after `rows` (kept metrics.csv rows).

  extra: scalars written with every row (e.g. examples_kept=N).
  """
  if not enabled:
    return NullWriter()
  logdir = os.path.join(run_dir, TENSORBOARD_DIR)
  stale = event_files(logdir)
  next_step = int(rows[-1]["step"]) + 1 if rows else 0
  writer = MetricsWriter(logdir, purge_step=0, suffix=f".step{next_step:09d}")
  for row in rows:
    writer.write_row(row, **extra)
  writer.flush()
  if writer.event_file is not None:  # the kept rows are on disk in the new file
    for path in stale:
      os.remove(path)
  return writer


def write_once(logdir: str, step: int, scalars: Mapping[str, float],
               enabled: bool = True) -> None:
  """Appends scalars as a new event file in `logdir` (e.g. a score's seconds)."""
  if not enabled:
    return
  writer = MetricsWriter(logdir, suffix=f".step{int(step):09d}")
  writer.write_scalars(step, scalars)
  writer.close()
