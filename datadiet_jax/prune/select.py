"""Selection strategies: which dataset examples to keep, given one score per example.

Every selector returns `i32[K]`: the kept dataset ids, sorted ascending (as the original).

Conventions (the same for every strategy):
  * Scores run "higher = harder" (EL2N, GraNd, forgetting). +inf (forgetting's "never
    learned") is the hardest score: `keep_hardest` keeps +inf examples first, `keep_easiest`
    keeps them last, |+inf| = +inf for the |score| variants. NaN and -inf are rejected.
  * Ties are broken by example index, lower index first, in every ranking: an example with a
    lower id ranks before an equal-scored example with a higher id, whether the ranking is
    ascending or descending. So among equal scores at the cut, `keep_hardest` and
    `keep_easiest` both keep the lower ids. (The original ranked with `argsort()[-k:]`, whose
    default quicksort has no defined tie order; a stable `argsort()[-k:]` would keep the
    *higher* ids among ties. We use `np.argsort(-scores, kind="stable")[:k]` instead.)
  * Random draws use `np.random.RandomState(seed)`, as the original; the original's random
    subset seed for run r is `original_random_seed(r)` = 4426 + r * 424242.
  * Sizes are kept counts (`int`); turn a prune fraction into one with `resolve_size`.
"""

from __future__ import annotations

import inspect

import numpy as np

from datadiet_jax.prune.errors import SelectionError
from datadiet_jax.prune.validate import (fraction_count, validate_fraction, validate_keep_count,
                                         validate_labels, validate_scores, validate_seed)

_RANDOM_SUBSET_SEED = 4426
_RUN_SEED_STRIDE = 424242


def original_random_seed(run: int) -> int:
  """The original's random-subset seed for run r: 4426 + r * 424242."""
  return _RANDOM_SUBSET_SEED + int(run) * _RUN_SEED_STRIDE


def _ids(ids: np.ndarray) -> np.ndarray:
  return np.sort(np.asarray(ids)).astype(np.int32)


def rank_descending(scores: np.ndarray) -> np.ndarray:
  """i64[N]: ids from the highest to the lowest score; ties: lower id first."""
  return np.argsort(-scores, kind="stable")


def rank_ascending(scores: np.ndarray) -> np.ndarray:
  """i64[N]: ids from the lowest to the highest score; ties: lower id first."""
  return np.argsort(scores, kind="stable")


def keep_hardest(scores, size: int) -> np.ndarray:
  """Keeps the `size` highest scores (the original's keep_max_scores).

  scores: f32[N] (+inf allowed: hardest); size: int in [1, N] -> i32[size] sorted ids.
  Ties at the cut: lower ids kept.
  """
  scores = validate_scores(scores, None, allow_inf=True)
  size = validate_keep_count(size, scores.shape[0])
  return _ids(rank_descending(scores)[:size])


def keep_easiest(scores, size: int) -> np.ndarray:
  """Keeps the `size` lowest scores (the original's keep_min_scores).

  scores: f32[N] (+inf allowed: kept last); size: int in [1, N] -> i32[size] sorted ids.
  Ties at the cut: lower ids kept.
  """
  scores = validate_scores(scores, None, allow_inf=True)
  size = validate_keep_count(size, scores.shape[0])
  return _ids(rank_ascending(scores)[:size])


def keep_max_abs(scores, size: int) -> np.ndarray:
  """Keeps the `size` largest |scores|: f32[N] -> i32[size] sorted ids; ties: lower ids."""
  scores = validate_scores(scores, None, allow_inf=True)
  return keep_hardest(np.abs(scores), size)


def keep_min_abs(scores, size: int) -> np.ndarray:
  """Keeps the `size` smallest |scores|: f32[N] -> i32[size] sorted ids; ties: lower ids."""
  scores = validate_scores(scores, None, allow_inf=True)
  return keep_easiest(np.abs(scores), size)


def keep_offset_window(scores, offset: int, size: int, ascending: bool = False) -> np.ndarray:
  """Keeps a window of `size` examples after skipping `offset` of them in score order.

  Default (ascending=False): rank from the highest score down, skip the `offset` hardest,
  keep the next `size` -- the "drop a small top slice of the hardest" pruning of "BERT on a
  Data Diet". ascending=True is the original Data Diet code's `argsort()[offset:offset+size]`
  (skip the `offset` easiest). Ties: lower id first in either direction, so the two
  directions are not mirror images when scores tie.

  scores: f32[N] (+inf allowed); offset: int >= 0; size: int >= 1; offset + size <= N
  -> i32[size] sorted ids.
  """
  scores = validate_scores(scores, None, allow_inf=True)
  n = scores.shape[0]
  if not isinstance(offset, (int, np.integer)) or isinstance(offset, (bool, np.bool_)) \
      or offset < 0:
    raise SelectionError(f"offset must be an int >= 0; got {type(offset).__name__} {offset!r}")
  size = validate_keep_count(size, n)
  if offset + size > n:
    raise SelectionError(f"offset {int(offset)} + size {size} exceeds the {n} examples: "
                         "lower the offset or the size")
  order = rank_ascending(scores) if ascending else rank_descending(scores)
  return _ids(order[int(offset):int(offset) + size])


def keep_random(num_examples: int, size: int, seed: int) -> np.ndarray:
  """Keeps a uniform random subset, exactly as the original.

  `np.sort(np.random.RandomState(seed).choice(num_examples, size, replace=False))`.
  num_examples: N; size: int in [1, N]; seed: int in [0, 2**32) -> i32[size] sorted ids.
  """
  if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise SelectionError(f"num_examples must be a positive int; got {num_examples!r}")
  size = validate_keep_count(size, int(num_examples))
  seed = validate_seed(seed, "keep_random")
  return _ids(np.random.RandomState(seed).choice(int(num_examples), size, replace=False))


# ----------------------------------------------------------------------------- class balance

def class_balanced_quotas(labels, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits `size` across the classes present in `labels` as evenly as possible.

  Water-filling: every class with room gets the same share of what is left; a class with
  fewer examples than its share gives all of them and its unused share goes back to the
  others, round after round. When fewer examples are left than classes with room, the
  remaining ones go one each to the classes with room in ascending class-id order. So
  quotas of classes that are not exhausted differ by at most 1, the lower class ids
  getting the extra ones, and sum(quotas) == size exactly.

  labels: i*[N]; size: int in [1, N] -> (classes i64[C] ascending, quotas i64[C]).
  """
  labels = validate_labels(labels, None)
  size = validate_keep_count(size, labels.shape[0])
  classes, counts = np.unique(labels, return_counts=True)
  quotas = np.zeros_like(counts)
  remaining = size
  while remaining > 0:
    open_ = np.flatnonzero(quotas < counts)
    share = remaining // open_.size
    if share == 0:
      quotas[open_[:remaining]] += 1
      break
    give = np.minimum(counts[open_] - quotas[open_], share)
    quotas[open_] += give
    remaining -= int(give.sum())
  return classes.astype(np.int64), quotas.astype(np.int64)


def keep_class_balanced(scores, labels, size: int, strategy: str = "hardest", *,
                        seed: int | None = None) -> np.ndarray:
  """Keeps `size` examples with per-class quotas from `class_balanced_quotas`.

  Within each class, `strategy` picks: "hardest" (highest scores), "easiest" (lowest) --
  ties: lower ids -- or "random": one `RandomState(seed)` drawing
  `choice(class_ids, quota, replace=False)` for each class in ascending class-id order.

  scores: f32[N] (ignored and may be None for "random"); labels: i*[N]; size: int in [1, N]
  -> i32[size] sorted ids.
  """
  labels = validate_labels(labels, None)
  n = labels.shape[0]
  strategies = ("hardest", "easiest", "random")
  if strategy not in strategies:
    raise SelectionError(f"unknown class-balanced strategy {strategy!r}: use one of "
                         f"{', '.join(strategies)}")
  if strategy == "random":
    rng = np.random.RandomState(validate_seed(seed, "class_balanced strategy='random'"))
  else:
    if scores is None:
      raise SelectionError(f"strategy {strategy!r} needs scores: pass scores, or use "
                           "strategy='random'")
    scores = validate_scores(scores, n, allow_inf=True)
  classes, quotas = class_balanced_quotas(labels, size)
  kept = []
  for c, quota in zip(classes, quotas):
    members = np.flatnonzero(labels == c)
    if quota == 0:
      continue
    if strategy == "random":
      kept.append(rng.choice(members, int(quota), replace=False))
    else:
      rank = rank_descending if strategy == "hardest" else rank_ascending
      kept.append(members[rank(scores[members])[:quota]])
  return _ids(np.concatenate(kept))


# ------------------------------------------------------------------------------------- CCS

def ccs_strata(scores, num_strata: int) -> np.ndarray:
  """Assigns each example to one of `num_strata` equal-width score bins.

  The finite scores' range [lo, hi] is split at `np.linspace(lo, hi, num_strata + 1)`;
  stratum i holds [edge_i, edge_{i+1}), the last one also holds hi. If all finite scores
  are equal they all go to stratum 0. +inf scores ("never learned") form one extra stratum,
  number `num_strata`.

  scores: f32[N] (+inf allowed) -> i32[N] stratum ids in [0, num_strata].
  """
  scores = validate_scores(scores, None, allow_inf=True)
  if not isinstance(num_strata, (int, np.integer)) or num_strata < 1:
    raise SelectionError(f"num_strata must be an int >= 1; got {num_strata!r}")
  strata = np.full(scores.shape, num_strata, np.int32)
  finite = np.isfinite(scores)
  if finite.any():
    values = scores[finite].astype(np.float64)
    lo, hi = values.min(), values.max()
    if hi == lo:
      strata[finite] = 0
    else:
      edges = np.linspace(lo, hi, int(num_strata) + 1)
      strata[finite] = np.searchsorted(edges[1:-1], values, side="right")
  return strata


def ccs_budgets(counts, size: int) -> np.ndarray:
  """Splits `size` across strata, the fewest-example strata first (Zheng et al. 2023).

  Strata are visited by ascending count (ties: lower stratum id first); each takes
  min(its count, remaining budget // strata not yet visited). Empty strata count as visited
  strata. The total is exactly `size` whenever size <= sum(counts).

  counts: i*[S]; size: int in [1, sum(counts)] -> i64[S] per-stratum budgets.
  """
  counts = np.asarray(counts, np.int64)
  size = validate_keep_count(size, int(counts.sum()))
  budgets = np.zeros_like(counts)
  remaining = size
  order = np.argsort(counts, kind="stable")
  for visited, s in enumerate(order):
    take = min(int(counts[s]), remaining // (counts.size - visited))
    budgets[s] = take
    remaining -= take
  assert remaining == 0, "ccs_budgets: budget not exhausted (size > sum(counts)?)"
  return budgets


def keep_ccs(scores, size: int, num_strata: int = 50, hard_prune_fraction: float = 0.0, *,
             seed: int) -> np.ndarray:
  """Coverage-centric coreset selection (Zheng et al. 2023, "Coverage-centric Coreset
  Selection for High Pruning Rates").

  1. Drop the floor(N * hard_prune_fraction) hardest examples (highest scores; +inf first;
     ties: lower ids dropped first, the same ranking as `keep_hardest`).
  2. Split the remaining scores into `num_strata` equal-width strata (`ccs_strata`, over the
     *remaining* examples' range; remaining +inf scores get one extra stratum).
  3. Split `size` across strata with `ccs_budgets` (fewest examples first).
  4. In each stratum, in ascending stratum order, draw its budget uniformly without
     replacement with one shared `np.random.RandomState(seed)`.

  scores: f32[N] (+inf allowed); size: int in [1, N - dropped]; num_strata: int >= 1;
  hard_prune_fraction: float in [0, 1); seed: int -> i32[size] sorted ids.
  """
  scores = validate_scores(scores, None, allow_inf=True)
  n = scores.shape[0]
  beta = validate_fraction(hard_prune_fraction, "hard_prune_fraction", allow_one=False)
  rng = np.random.RandomState(validate_seed(seed, "keep_ccs"))
  dropped = fraction_count(n, beta)
  remaining = np.sort(rank_descending(scores)[dropped:])
  if remaining.size == 0:
    raise SelectionError(f"hard_prune_fraction={beta} drops all {n} examples: use a smaller "
                         "fraction")
  if isinstance(size, (int, np.integer)) and size > remaining.size:
    raise SelectionError(f"size {int(size)} exceeds the {remaining.size} examples left after "
                         f"hard_prune_fraction={beta} dropped {dropped}: lower one of them")
  size = validate_keep_count(size, remaining.size)
  strata = ccs_strata(scores[remaining], num_strata)
  counts = np.bincount(strata, minlength=int(num_strata) + 1)
  if counts[-1] == 0:  # no +inf stratum
    counts = counts[:-1]
  budgets = ccs_budgets(counts, size)
  kept = [rng.choice(remaining[strata == s], int(b), replace=False)
          for s, b in enumerate(budgets) if b > 0]
  return _ids(np.concatenate(kept))


# -------------------------------------------------------------------------------- registry

def _keep_hardest(scores, labels, keep, seed):
  return keep_hardest(_need(scores, "keep_hardest"), keep)


def _keep_easiest(scores, labels, keep, seed):
  return keep_easiest(_need(scores, "keep_easiest"), keep)


def _keep_max_abs(scores, labels, keep, seed):
  return keep_max_abs(_need(scores, "keep_max_abs"), keep)


def _keep_min_abs(scores, labels, keep, seed):
  return keep_min_abs(_need(scores, "keep_min_abs"), keep)


def _offset(scores, labels, keep, seed, *, offset, ascending=False):
  return keep_offset_window(_need(scores, "offset"), offset, keep, ascending=ascending)


def _random(scores, labels, keep, seed):
  source = scores if scores is not None else labels
  if source is None:
    raise SelectionError("method 'random' needs scores or labels to know the dataset size")
  return keep_random(int(np.asarray(source).shape[0]), keep, seed)


def _class_balanced(scores, labels, keep, seed, *, strategy="hardest"):
  if labels is None:
    raise SelectionError("method 'class_balanced' needs labels: pass labels=...")
  return keep_class_balanced(scores, labels, keep, strategy, seed=seed)


def _ccs(scores, labels, keep, seed, *, num_strata=50, hard_prune_fraction=0.0):
  return keep_ccs(_need(scores, "ccs"), keep, num_strata, hard_prune_fraction, seed=seed)


def _need(scores, method):
  if scores is None:
    raise SelectionError(f"method {method!r} needs scores: pass scores=..., or use 'random'")
  return scores


# name -> fn(scores, labels, keep, seed, **options) -> i32[K] sorted ids.
SELECTORS = {
    "keep_hardest": _keep_hardest,
    "keep_easiest": _keep_easiest,
    "keep_max_abs": _keep_max_abs,
    "keep_min_abs": _keep_min_abs,
    "offset": _offset,
    "random": _random,
    "class_balanced": _class_balanced,
    "ccs": _ccs,
}


def _options(fn) -> list[str]:
  params = inspect.signature(fn).parameters.values()
  return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def select(method: str, scores=None, labels=None, keep: int | None = None,
           seed: int | None = None, **options) -> np.ndarray:
  """Runs the selector registered as `method`.

  Args:
    method: a key of SELECTORS.
    scores: f32[N] or None (only "random" and class_balanced strategy="random" go without).
    labels: i*[N] or None (needed by "class_balanced"); checked against scores' length.
    keep: the kept count, an int (see `resolve_size` for fractions).
    seed: RandomState seed for "random", "ccs" and class_balanced strategy="random".
    **options: "offset": offset, ascending; "class_balanced": strategy;
      "ccs": num_strata, hard_prune_fraction.

  Returns:
    i32[keep]: sorted kept dataset ids.
  """
  if method not in SELECTORS:
    raise SelectionError(f"unknown selection method {method!r}: use one of "
                         f"{', '.join(sorted(SELECTORS))}")
  fn = SELECTORS[method]
  allowed = _options(fn)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise SelectionError(f"method {method!r} takes no option {', '.join(map(repr, unknown))}: "
                         f"its options are {', '.join(allowed) or 'none'}")
  missing = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
             and p.name not in options]
  if missing:
    raise SelectionError(f"method {method!r} needs option {', '.join(map(repr, missing))}: "
                         "pass it as a keyword argument")
  if keep is None:
    raise SelectionError("keep is required: pass the kept count (resolve_size turns a prune "
                         "fraction into one)")
  if scores is not None and labels is not None:
    validate_scores(scores, np.asarray(labels).shape[0], allow_inf=True)
  return fn(scores, labels, keep, seed, **options)
