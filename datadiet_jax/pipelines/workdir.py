"""An experiment's output folder: checking its path, recording how it was made, logging.

  <workdir>/flags.txt      the settings (experiments/: every flag, re-usable as a flagfile)
  <workdir>/run_info.json  argv, versions, git commit, devices, plus the caller's entries
  <workdir>/train.log      the readable log (per-evaluation lines too)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from datadiet_jax import artifacts
from datadiet_jax.provenance import provenance


def check_workdir_path(path: str) -> None:
  """Raises ValueError if `path` cannot be a workdir: a file, or below a file. (Writing
  problems, e.g. a read-only folder, surface as OSError when it is created: one line too.)"""
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir={path} is a file, not a folder; pass a folder path")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"--workdir={path} lies below {parent}, which is a file; pass a folder "
                     "path")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={path}: {parent} is not writable; choose a folder you can "
                     "write to")


def prepare_workdir(path: str, settings_text: str, argv: Optional[Sequence[str]] = None,
                    extra_info: Optional[dict] = None) -> str:
  """Creates `path`, writes flags.txt (`settings_text`) and run_info.json (argv, default
  sys.argv; provenance; extra_info), and logs to train.log; returns the absolute path."""
  workdir = os.path.abspath(path)
  os.makedirs(workdir, exist_ok=True)
  artifacts.write_text(os.path.join(workdir, "flags.txt"), settings_text)
  info = {"argv": list(sys.argv if argv is None else argv), **provenance(),
          **(extra_info or {})}
  artifacts.write_json(os.path.join(workdir, "run_info.json"), info)
  setup_logging(os.path.join(workdir, "train.log"))
  return workdir


def setup_logging(log_path: Optional[str] = None) -> None:
  """The datadiet_jax logger: INFO to stderr; everything (DEBUG too) to `log_path`."""
  logger = logging.getLogger("datadiet_jax")
  logger.setLevel(logging.DEBUG)
  logger.propagate = False
  for handler in list(logger.handlers):
    logger.removeHandler(handler)
  formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
  stream = logging.StreamHandler(sys.stderr)
  stream.setFormatter(formatter)
  stream.setLevel(logging.INFO)  # per-evaluation lines (DEBUG) go to train.log only
  logger.addHandler(stream)
  if log_path:
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(formatter)
    logger.addHandler(file_handler)
  # Orbax logs every save at INFO through absl; keep the console readable.
  logging.getLogger("absl").setLevel(logging.WARNING)
