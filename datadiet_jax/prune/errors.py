"""The one error type raised by `datadiet_jax.prune`."""

from __future__ import annotations


class SelectionError(ValueError):
  """A bad score array, size, seed, label array or method name for data selection.

  Every message names the problem and how to fix it. Subclasses `ValueError`, so callers
  that already catch `ValueError` keep working.
  """
