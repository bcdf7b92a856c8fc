"""Label noise as the original: permute a seeded random fraction of labels among themselves.

The original chose `int(N * fraction)` ids with `RandomState(seed).choice(N, M,
replace=False)` and set `labels[np.sort(ids)] = labels[ids]`, but did not record which
labels changed. A permutation can leave some labels as they were (a fixed point, or two
swapped examples of one class), so here the record keeps both the chosen ids and the ids
whose label actually changed, with their old and new labels.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from datadiet_jax import artifacts
from datadiet_jax.prune.errors import SelectionError
from datadiet_jax.prune.select import rank_descending
from datadiet_jax.prune.validate import (validate_fraction, validate_keep_count,
                                         validate_labels, validate_scores, validate_seed)

_ARRAY_FIELDS = ("chosen_ids", "changed_ids", "old_labels", "new_labels")
_SCALAR_FIELDS = ("seed", "fraction", "num_classes", "num_examples")


@dataclasses.dataclass(frozen=True)
class LabelNoiseRecord:
  """What `corrupt_labels` did.

  chosen_ids: i32[M] sorted, M = int(N * fraction): the ids whose labels were permuted.
  changed_ids: i32[K] sorted subset of chosen_ids: the ids whose label actually changed.
  old_labels: i32[K] labels[changed_ids] before; new_labels: i32[K] after (all differ).
  """

  seed: int
  fraction: float
  num_classes: int
  num_examples: int
  chosen_ids: np.ndarray
  changed_ids: np.ndarray
  old_labels: np.ndarray
  new_labels: np.ndarray

  def apply(self, labels) -> np.ndarray:
    """Returns a copy of clean `labels` i*[N] with the recorded changes; checks they match."""
    labels = validate_labels(labels, self.num_examples, self.num_classes)
    if not np.array_equal(labels[self.changed_ids], self.old_labels):
      raise SelectionError("labels do not match the record's old labels: the record belongs to "
                           "another dataset or example order")
    noisy = labels.copy()
    noisy[self.changed_ids] = self.new_labels
    return noisy


def corrupt_labels_with_record(labels, fraction: float, seed: int,
                               num_classes: int) -> tuple[np.ndarray, LabelNoiseRecord]:
  """Permutes the labels of a seeded random `int(N * fraction)` ids among themselves.

  labels: i*[N] in [0, num_classes); fraction: float in [0, 1]; seed: int
  -> (noisy labels i*[N] (same dtype, a copy), LabelNoiseRecord).
  """
  labels = validate_labels(labels, None, num_classes)
  fraction = validate_fraction(fraction, "fraction", allow_one=True)
  seed = validate_seed(seed, "corrupt_labels")
  n = labels.shape[0]
  rng = np.random.RandomState(seed)
  ids = rng.choice(n, int(n * fraction), replace=False)  # int() truncation, as the original
  noisy = labels.copy()
  noisy[np.sort(ids)] = noisy[ids]
  changed = np.flatnonzero(noisy != labels).astype(np.int32)
  record = LabelNoiseRecord(seed=seed, fraction=fraction, num_classes=int(num_classes),
                            num_examples=n, chosen_ids=np.sort(ids).astype(np.int32),
                            changed_ids=changed, old_labels=labels[changed].astype(np.int32),
                            new_labels=noisy[changed].astype(np.int32))
  return noisy, record


def corrupt_labels(labels, fraction: float, seed: int,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """The original's label noise: i*[N] -> (noisy labels i*[N], changed ids i32[K] sorted).

  Use `corrupt_labels_with_record` for the chosen ids and old/new labels as well.
  """
  noisy, record = corrupt_labels_with_record(labels, fraction, seed, num_classes)
  return noisy, record.changed_ids


def save_label_noise_record(path: str, record: LabelNoiseRecord) -> None:
  """Writes `record` atomically to `path`, as .npz or .json (chosen by the suffix)."""
  fields = {f: getattr(record, f) for f in _SCALAR_FIELDS}
  arrays = {f: np.asarray(getattr(record, f), np.int32) for f in _ARRAY_FIELDS}
  suffix = os.path.splitext(path)[1]
  if suffix == ".json":
    artifacts.write_json(path, {**fields, **arrays})
  elif suffix == ".npz":
    with artifacts.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, **arrays, **{k: np.asarray(v) for k, v in fields.items()})
  else:
    raise SelectionError(f"label noise record path {path!r} must end in .npz or .json")


def load_label_noise_record(path: str) -> LabelNoiseRecord:
  """Reads a record written by `save_label_noise_record` (.npz or .json)."""
  if path.endswith(".json"):
    data = artifacts.read_json(path)
  elif path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as npz:
      data = {k: npz[k] for k in npz.files}
  else:
    raise SelectionError(f"label noise record path {path!r} must end in .npz or .json")
  missing = [f for f in _SCALAR_FIELDS + _ARRAY_FIELDS if f not in data]
  if missing:
    raise SelectionError(f"{path} lacks {', '.join(missing)}: it was not written by "
                         "save_label_noise_record")
  return LabelNoiseRecord(
      seed=int(data["seed"]), fraction=float(data["fraction"]),
      num_classes=int(data["num_classes"]), num_examples=int(data["num_examples"]),
      **{f: np.asarray(data[f], np.int32).reshape(-1) for f in _ARRAY_FIELDS})


def _top_k_hits(scores, changed_ids, k: int) -> tuple[int, int]:
  scores = validate_scores(scores, None, allow_inf=True)
  n = scores.shape[0]
  k = validate_keep_count(k, n, name="k")
  changed = np.asarray(changed_ids)
  if changed.ndim != 1 or (changed.size and not np.issubdtype(changed.dtype, np.integer)):
    raise SelectionError(f"changed_ids must be a 1-D integer array; got shape {changed.shape}, "
                         f"dtype {changed.dtype}")
  if changed.size and (changed.min() < 0 or changed.max() >= n):
    raise SelectionError(f"changed_ids must lie in [0, {n}); got range "
                         f"[{int(changed.min())}, {int(changed.max())}]: ids and scores come "
                         "from different datasets")
  if np.unique(changed).size != changed.size:
    raise SelectionError("changed_ids contains duplicates: pass each changed id once")
  top = rank_descending(scores)[:k]
  return int(np.isin(top, changed).sum()), int(changed.size)


def noisy_detection_precision(scores, changed_ids, k: int) -> float:
  """Fraction of the k highest-scored examples whose label was changed.

  scores: f32[N] (+inf allowed); changed_ids: i*[K]; k: int in [1, N] -> float in [0, 1].
  Ties at the cut: lower ids ranked first (as `keep_hardest`).
  """
  hits, _ = _top_k_hits(scores, changed_ids, k)
  return hits / k


def noisy_detection_recall(scores, changed_ids, k: int) -> float:
  """Fraction of the changed ids found among the k highest-scored examples.

  scores: f32[N]; changed_ids: i*[K], K >= 1; k: int in [1, N] -> float in [0, 1].
  """
  hits, total = _top_k_hits(scores, changed_ids, k)
  if total == 0:
    raise SelectionError("recall is undefined with no changed ids: the noise changed no label")
  return hits / total
