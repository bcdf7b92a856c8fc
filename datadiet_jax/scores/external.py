"""Score files written by other codebases, read through `scores.io.load_scores`.

DUAL (Cho et al., ICML 2025; behaapyy/dual-pruning, exp_cifar/importance_evaluation.py)
writes one folder per seed (`generated/<dataset>/<seed>/`) holding, for each method,

  <stem>_score.npy   [N] the score, in the dataset's example order (np.save of a torch
                     tensor or a numpy array; integer for forgetting)
  <stem>_mask.npy    i[N] the example ids sorted by that score, ascending (`score.sort()[1]`,
                     `np.argsort(score)`): an index list, easiest first by the Data Diet
                     scores' "higher = harder" orientation

Its EL2N (at epoch 20 of one run), entropy (of the last epoch's softmax) and forgetting
(count of correct -> incorrect transitions over epochs) have this package's definitions
and orientation, so their files stand for `el2n`, `entropy` and `forgetting`. The files
carry no checkpoint step: they are found under a folder whatever step is asked (pass the
file itself to be explicit). An index list alone is read as rank scores (rank[order[i]] =
i, f32), which order and prune exactly as the scores it was sorted by (ties aside).
DUAL's other files (aum, dynunc, dual_score_T<k>, tdds_<T>_<J>) name scores this package
computes with its own accumulators (scores/aum.py, dyn_unc.py, dual.py, tdds.py) but does
not prune by from files yet, so they are not mapped here.
"""

from __future__ import annotations

import os

import numpy as np

from datadiet_jax.scores.errors import ScoreError

# This package's score name -> DUAL's file stem (`<stem>_score.npy`, `<stem>_mask.npy`).
DUAL_STEMS = {"el2n": "el2n", "entropy": "entropy", "forgetting": "forgetting"}
ORDER_SUFFIX = "_mask.npy"


def dual_candidates(directory: str, score: str) -> list[str]:
  """DUAL's files that may hold `score` under `directory`: the score, then the index list."""
  stem = DUAL_STEMS.get(score)
  if stem is None:
    return []
  return [os.path.join(directory, f"{stem}_score.npy"),
          os.path.join(directory, f"{stem}{ORDER_SUFFIX}")]


def is_index_list(path: str) -> bool:
  """Whether `path` is an index list (example ids sorted by score) rather than scores."""
  return os.path.basename(path).endswith(ORDER_SUFFIX)


def ranks_from_index_list(order: np.ndarray, what: str) -> np.ndarray:
  """order: int[N], a permutation of 0..N-1 (ids sorted by score, ascending) -> f32[N]
  rank of every example (0 = first in the list = lowest score).

  Raises ScoreError unless `order` is a 1-d integer permutation of 0..N-1."""
  order = np.asarray(order)
  if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
    raise ScoreError(f"{what}: an index list must be a 1-d array of integer example ids, got "
                     f"{order.dtype} of shape {list(order.shape)}; pass the <method>_score.npy "
                     "file instead")
  n = len(order)
  counts = np.bincount(order[(order >= 0) & (order < n)], minlength=n)
  if n and (order.min() < 0 or order.max() >= n or np.any(counts != 1)):
    out_of_range = int(np.sum((order < 0) | (order >= n)))
    raise ScoreError(f"{what}: not a permutation of the example ids 0..{n - 1} "
                     f"({out_of_range} out of range, {int(np.sum(counts == 0))} missing, "
                     f"{int(np.sum(counts > 1))} repeated); an index list ranks every example "
                     "once (a coreset of some ids is an --example_ids_file)")
  ranks = np.empty(n, np.float32)
  ranks[order] = np.arange(n, dtype=np.float32)
  return ranks
