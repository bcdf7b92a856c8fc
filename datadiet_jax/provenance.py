"""What produced an artifact: package versions, git commit, host and time."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

_PACKAGES = ("datadiet_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
             "absl-py", "pillow", "scipy", "tokenizers", "safetensors", "seqeval")


def package_versions() -> dict:
  versions = {}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def git_commit() -> str | None:
  """The commit of the checkout this package is imported from (+ '-dirty'), or None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return commit + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return None


def provenance() -> dict:
  import jax
  return {
      "versions": package_versions(),
      "git_commit": git_commit(),
      "python": platform.python_version(),
      "host": platform.node(),
      "devices": [str(d) for d in jax.devices()],
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
