"""Score files written by other codebases, read through `scores.io.load_scores`.

DUAL (Cho et al., ICML 2025; behaapyy/dual-pruning, exp_cifar/importance_evaluation.py)
writes one folder per seed (`generated/<dataset>/<seed>/`) holding, for each method,

  <method>_score.npy  [N] the score, in the dataset's example order (np.save of a torch
                      tensor or a numpy array; integer for forgetting)
  <method>_mask.npy   i[N] the example ids sorted by that score, ascending (`score.sort()[1]`,
                      `np.argsort(score)`)

from the per-epoch train-mode logits its train.py saves (`<epoch>_Output.npy`). The files
and how each reads here (this package's name <- DUAL's files):

  el2n       <- el2n_score / el2n_mask: EL2N of epoch 20's outputs; our definition.
  entropy    <- entropy_score / entropy_mask: of the last epoch's softmax; ours.
  forgetting <- forgetting_score / forgetting_mask: correct -> incorrect transitions; ours.
  dyn_unc    <- dynunc_score / dynunc_mask: mean over windows of J = 10 epochs of
                10 x std(true-class prob) (ddof 1): read divided by 10, which is
                scores/dyn_unc.py's U(x) over the same epochs.
  dual       <- dual_score_T<k> / dual_mask_T<k>: the same windows over the first k epochs
                of 10 x std x (1 - mean): read divided by 10, scores/dual.py's DUAL(x) read
                after epoch k.
  aum        <- aum_score / aum_mask: DUAL's aum() resets its sum inside the epoch loop, so
                the file holds the LAST epoch's probability margin p_y - max_{c != y} p_c,
                not the mean logit margin of scores/aum.py (Pleiss et al.): high = easy, so
                it is read negated (higher = harder, as our -AUM files) and its index list
                reversed. Same orientation, another quantity: the load logs a warning.
  tdds       <- tdds_<T>_<J>_score / tdds_<T>_<J>_mask: DUAL's tdds() takes the log of the
                raw logits (NaN -> 0) and indexes every window from epoch 0, so it is not
                scores/tdds.py's definition (see there); read as stored (high = kept), with
                a warning.

The files carry no checkpoint step: they are found under a folder whatever step is asked
(pass the file itself to be explicit). Where a folder holds several variants of one score
(DUAL writes tdds for five (T, J) pairs; dual_score_T<k> for each k it was run with), the
folder is ambiguous and the error lists the files to pass instead. An index list alone is
read as rank scores (rank[order[i]] = i, f32; reversed for aum), which order and prune
exactly as the scores it was sorted by (ties aside). A DUAL file asked for under another
score's name (aum_score.npy as el2n) is refused.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import logging
import os

import numpy as np

from datadiet_jax.scores.errors import ScoreError

log = logging.getLogger("datadiet_jax")

ORDER_SUFFIX = "_mask.npy"


@dataclasses.dataclass(frozen=True)
class DualFiles:
  """One score's files in a DUAL seed folder (glob patterns) and how they read as ours:
  values x sign / scale; `sign` -1 also reverses an index list. `differs`: how DUAL's
  quantity differs from ours (logged when read), empty when it is ours."""

  scores: str
  index_list: str
  sign: float = 1.0
  scale: float = 1.0
  differs: str = ""


# This package's score name -> DUAL's files.
DUAL_FILES = {
    "el2n": DualFiles("el2n_score.npy", "el2n_mask.npy"),
    "entropy": DualFiles("entropy_score.npy", "entropy_mask.npy"),
    "forgetting": DualFiles("forgetting_score.npy", "forgetting_mask.npy"),
    "dyn_unc": DualFiles("dynunc_score.npy", "dynunc_mask.npy", scale=10.0),
    "dual": DualFiles("dual_score_T*.npy", "dual_mask_T*.npy", scale=10.0),
    "aum": DualFiles("aum_score.npy", "aum_mask.npy", sign=-1.0,
                     differs="DUAL's aum file is the last epoch's softmax margin (its sum is "
                             "reset every epoch), not the mean logit margin over training; "
                             "read negated (higher = harder)"),
    "tdds": DualFiles("tdds_*_*_score.npy", "tdds_*_*_mask.npy",
                      differs="DUAL's tdds file is computed on raw logits with every window "
                              "starting at epoch 0, not scores/tdds.py's windowed KL "
                              "differences of softmax outputs; read as stored"),
}


def _matches(directory: str, pattern: str) -> list[str]:
  return sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))


def dual_candidates(directory: str, score: str) -> list[str]:
  """DUAL's files that may hold `score` under `directory`: the scores, then the index list
  (a glob pattern where none matches, for the error message). ScoreError if a pattern
  matches several files (variants of the score: pass one file)."""
  files = DUAL_FILES.get(score)
  if files is None:
    return []
  out = []
  for pattern in (files.scores, files.index_list):
    found = _matches(directory, pattern)
    if len(found) > 1:
      raise ScoreError(f"{directory} holds {len(found)} of DUAL's '{score}' files "
                       f"({', '.join(os.path.basename(p) for p in found)}): which one is "
                       "meant is ambiguous; pass the file itself")
    out.extend(found or [os.path.join(directory, pattern)])
  return out


def dual_score_of(path: str) -> tuple[str, bool] | None:
  """(this package's score name, is an index list) if `path` is named as one of DUAL's
  files, else None."""
  name = os.path.basename(path)
  for score, files in DUAL_FILES.items():
    if fnmatch.fnmatchcase(name, files.scores):
      return score, False
    if fnmatch.fnmatchcase(name, files.index_list):
      return score, True
  return None


def is_index_list(path: str) -> bool:
  """Whether `path` is an index list (example ids sorted by score) rather than scores."""
  dual = dual_score_of(path)
  return dual[1] if dual is not None else os.path.basename(path).endswith(ORDER_SUFFIX)


def as_ours(path: str, values: np.ndarray, score: str) -> np.ndarray:
  """values: [N] read from `path` -> f32[N] in this package's values and orientation
  (higher = harder): DUAL's files are rescaled / negated (index lists become ranks);
  other index lists become ranks. ScoreError if `path` is DUAL's file of another score."""
  dual = dual_score_of(path)
  if dual is None:  # another codebase's index list, or plain scores
    return ranks_from_index_list(values, path) if is_index_list(path) else values
  name, index_list = dual
  if name != score:
    raise ScoreError(f"{path} is DUAL's '{name}' file, asked for as '{score}'; pass "
                     f"--scores / the score name {name}, or the '{score}' file")
  files = DUAL_FILES[name]
  if files.differs:
    log.warning("%s: %s", path, files.differs)
  if index_list:
    ranks = ranks_from_index_list(values, path)
    return ranks if files.sign > 0 else (len(ranks) - 1 - ranks).astype(np.float32)
  if files.sign == 1.0 and files.scale == 1.0:
    return values
  return (np.asarray(values, np.float64) * files.sign / files.scale).astype(np.float32)


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
