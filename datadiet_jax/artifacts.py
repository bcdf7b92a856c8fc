"""Atomic writes of result files: write to a temp file in the same folder, then rename.

A crash or a bad input never leaves a half-written or overwritten artifact behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import json
import os
import sys
import tempfile
from typing import Iterator, Sequence

import numpy as np


# Set within `written_by_this_process()`: this process writes even if it is not process 0.
_OWN_FILES = contextvars.ContextVar("datadiet_own_files", default=False)


def is_primary_process() -> bool:
  """False in processes 1.. of a multi-process (multi-host) jax program.

  Every process of such a program computes the same results; only process 0 writes them
  (checkpoints are Orbax's business: every process takes part in those).
  """
  if "jax" not in sys.modules:  # never imports jax itself
    return True
  import jax
  if not jax.distributed.is_initialized():
    return True
  return jax.process_index() == 0


@contextlib.contextmanager
def written_by_this_process() -> Iterator[None]:
  """Within the block every process writes its files, also processes 1.. of a multi-host
  program: for files that are each process's own (its shard of the example scores), not
  copies of what process 0 writes."""
  token = _OWN_FILES.set(True)
  try:
    yield
  finally:
    _OWN_FILES.reset(token)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temp path beside `path`; renames it onto `path` only if the block succeeds.

  In processes other than 0 of a multi-host program, the file is written to a temporary
  folder and discarded (see is_primary_process), unless within written_by_this_process().
  """
  if not is_primary_process() and not _OWN_FILES.get():
    with tempfile.TemporaryDirectory() as scratch:
      yield os.path.join(scratch, os.path.basename(path))
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


def write_json(path: str, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_npy(path: str, array: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(array))


def write_png(path: str, fig, dpi: int = 120) -> None:
  """Saves a matplotlib figure as a PNG atomically (tight layout), then closes it."""
  import matplotlib.pyplot as plt
  fig.tight_layout()
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=dpi)
  plt.close(fig)


def write_csv(path: str, rows: Sequence[dict], fieldnames: Sequence[str] | None = None) -> None:
  fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fieldnames)
  writer.writeheader()
  writer.writerows(rows)
  write_text(path, buffer.getvalue())


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def jsonable(obj):
  """`obj` as it reads back from JSON: tuples -> lists, numpy scalars -> Python numbers."""
  return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj):
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
