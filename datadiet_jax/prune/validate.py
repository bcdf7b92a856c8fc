"""Input checks for data selection: score arrays, label arrays, kept counts and seeds.

Sizes are never guessed from the type of one argument. `resolve_size` takes exactly one of
two keyword arguments:

  * `keep_count: int`       -- how many examples to keep (e.g. 35_000 of CIFAR-10's 50_000);
  * `prune_fraction: float` -- the fraction to *prune*, in [0, 1) (e.g. 0.3 keeps 35_000).

With `prune_fraction`, the number pruned is floor(N * prune_fraction) (after rounding the
product to 6 decimals, so 0.3 * 50_000 is 15_000 and not 14_999), and the kept count is the
rest, so never more than the asked fraction is pruned. Every selector takes the resolved
`int` kept count, never a fraction.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from datadiet_jax.prune.errors import SelectionError

# np.random.RandomState accepts seeds in [0, 2**32).
_MAX_SEED = 2**32 - 1


def _describe(value) -> str:
  return f"{type(value).__name__} {value!r}"


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_float(value) -> bool:
  return isinstance(value, (float, np.floating))


def validate_scores(scores, num_examples: int | None, allow_inf: bool = False,
                    name: str = "scores") -> np.ndarray:
  """Checks one score per dataset example; returns them as a float array.

  Args:
    scores: [N] numbers (numpy, JAX or a list). Floating dtypes are kept (f32 stays f32);
      integer dtypes (e.g. forgetting counts) become f64.
    num_examples: the dataset size N the scores must match, or None to skip that check.
    allow_inf: accept +inf (forgetting scores use +inf for "never learned"). -inf and NaN
      are always rejected.
    name: how the array is called in error messages.

  Returns:
    f32[N] or f64[N]: the scores (a view when no conversion was needed).

  Raises:
    SelectionError: not 1-D, not numeric, wrong length, NaN, -inf, or +inf when not allowed.
  """
  arr = np.asarray(scores)
  if arr.ndim != 1:
    raise SelectionError(f"{name} must be a 1-D array with one score per example; got shape "
                         f"{arr.shape}: reduce per-run scores (e.g. mean over axis 0) first")
  if np.issubdtype(arr.dtype, np.integer):
    arr = arr.astype(np.float64)
  elif not np.issubdtype(arr.dtype, np.floating):
    raise SelectionError(f"{name} must hold real numbers; got dtype {arr.dtype}: pass a float "
                         "or integer array")
  if num_examples is not None and arr.shape[0] != num_examples:
    raise SelectionError(
        f"{name} has {arr.shape[0]} entries but the dataset has {num_examples} examples: the "
        "score file belongs to another dataset or example order; recompute the scores for "
        "this dataset")
  nan = np.isnan(arr)
  if nan.any():
    raise SelectionError(f"{name} contains {int(nan.sum())} NaN values (first at index "
                         f"{int(np.argmax(nan))}): fix or rerun the scoring that produced them")
  neg_inf = np.isneginf(arr)
  if neg_inf.any():
    raise SelectionError(f"{name} contains {int(neg_inf.sum())} -inf values (first at index "
                         f"{int(np.argmax(neg_inf))}): -inf is never a valid score; fix the "
                         "scoring that produced them")
  pos_inf = np.isposinf(arr)
  if not allow_inf and pos_inf.any():
    raise SelectionError(f"{name} contains {int(pos_inf.sum())} +inf values (first at index "
                         f"{int(np.argmax(pos_inf))}): pass allow_inf=True only for forgetting "
                         "scores, where +inf means 'never learned'")
  return arr


def validate_labels(labels, num_examples: int | None, num_classes: int | None = None,
                    name: str = "labels") -> np.ndarray:
  """Checks integer class labels: i*[N] in [0, num_classes); returns them as an array."""
  arr = np.asarray(labels)
  if arr.ndim != 1:
    raise SelectionError(f"{name} must be a 1-D array of class ids; got shape {arr.shape}: "
                         "pass integer labels, not one-hot vectors")
  if not np.issubdtype(arr.dtype, np.integer):
    raise SelectionError(f"{name} must have an integer dtype; got {arr.dtype}: cast the class "
                         "ids to int32")
  if num_examples is not None and arr.shape[0] != num_examples:
    raise SelectionError(f"{name} has {arr.shape[0]} entries but the dataset has "
                         f"{num_examples} examples: labels and scores come from different "
                         "datasets or orders")
  if arr.size and arr.min() < 0:
    raise SelectionError(f"{name} contains negative class id {int(arr.min())} (first at index "
                         f"{int(np.argmax(arr < 0))}): class ids must be >= 0")
  if num_classes is not None:
    if not _is_int(num_classes) or num_classes < 1:
      raise SelectionError(f"num_classes must be a positive int; got {_describe(num_classes)}")
    if arr.size and arr.max() >= num_classes:
      raise SelectionError(f"{name} contains class id {int(arr.max())} but num_classes is "
                           f"{num_classes}: pass the dataset's real number of classes")
  return arr


def validate_keep_count(keep_count, num_examples: int, name: str = "size") -> int:
  """Checks a kept count: an int in [1, num_examples]; returns it as a Python int."""
  if _is_float(keep_count):
    raise SelectionError(f"{name} must be an int count of examples to keep; got "
                         f"{_describe(keep_count)}: for a fraction use "
                         "resolve_size(num_examples, prune_fraction=...)")
  if not _is_int(keep_count):
    raise SelectionError(f"{name} must be an int count of examples to keep; got "
                         f"{_describe(keep_count)}")
  if keep_count < 1:
    raise SelectionError(f"{name} is {int(keep_count)}: keep at least 1 example")
  if keep_count > num_examples:
    raise SelectionError(f"{name} is {int(keep_count)} but only {num_examples} examples are "
                         f"available: keep at most {num_examples}")
  return int(keep_count)


def validate_seed(seed, what: str = "this selection") -> int:
  """Checks a NumPy RandomState seed: an int in [0, 2**32)."""
  if seed is None:
    raise SelectionError(f"{what} is random and needs a seed: pass seed=... (the original "
                         "uses 4426 + run * 424242 for random subsets)")
  if not _is_int(seed) or not 0 <= seed <= _MAX_SEED:
    raise SelectionError(f"seed must be an int in [0, 2**32); got {_describe(seed)}")
  return int(seed)


def validate_fraction(fraction, name: str, *, allow_one: bool) -> float:
  """Checks a fraction: a float in [0, 1) (or [0, 1] when allow_one)."""
  upper = "1]" if allow_one else "1)"
  if _is_int(fraction):
    raise SelectionError(f"{name} must be a float in [0, {upper}; got {_describe(fraction)}: "
                         "write it as a float (e.g. 0.0), or pass a count instead")
  if not _is_float(fraction) or math.isnan(fraction):
    raise SelectionError(f"{name} must be a float in [0, {upper}; got {_describe(fraction)}")
  if fraction < 0 or fraction > 1 or (fraction == 1 and not allow_one):
    raise SelectionError(f"{name} is {float(fraction)} but must be in [0, {upper}: "
                         + ("pruning everything would leave no data" if not allow_one
                            else "it is a fraction of the dataset"))
  return float(fraction)


def fraction_count(num_examples: int, fraction: float) -> int:
  """floor(num_examples * fraction), robust to float round-off (0.3 * 50_000 -> 15_000)."""
  return int(math.floor(round(num_examples * fraction, 6)))


def resolve_size(num_examples: int, *, keep_count: int | None = None,
                 prune_fraction: float | None = None) -> int:
  """Returns the number of examples to keep, from exactly one of two keyword arguments.

  Args:
    num_examples: the dataset size N (an int >= 1).
    keep_count: keep this many examples; an int in [1, N].
    prune_fraction: prune this fraction of the dataset; a float in [0, 1). The number pruned
      is floor(N * prune_fraction); the kept count N - pruned must be >= 1.

  Returns:
    int in [1, N]: the kept count to pass to a selector.

  Raises:
    SelectionError: both or neither given, an int fraction, a float count, or out of range.
  """
  if not _is_int(num_examples) or num_examples < 1:
    raise SelectionError(f"num_examples must be a positive int; got {_describe(num_examples)}")
  if (keep_count is None) == (prune_fraction is None):
    raise SelectionError("pass exactly one of keep_count: int (examples to keep) or "
                         "prune_fraction: float (fraction to prune, in [0, 1))")
  if keep_count is not None:
    return validate_keep_count(keep_count, num_examples, name="keep_count")
  fraction = validate_fraction(prune_fraction, "prune_fraction", allow_one=False)
  kept = num_examples - fraction_count(num_examples, fraction)
  if kept < 1:
    raise SelectionError(f"prune_fraction={fraction} of {num_examples} examples keeps none: "
                         "use a smaller fraction")
  return kept
