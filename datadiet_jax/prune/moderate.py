"""Moderate-DS (Xia, Liu, Yu, Shen, Han, Liu: "Moderate Coreset: A Universal Method of Data
Selection for Real-world Data-efficient Deep Learning", ICLR 2023).

With the penultimate features z_i = h(x_i) of a trained model (scores/features.py):

  Eq. (1), class centres:  z^j = centre of {z_i : y_i = j}, here the component-wise MEDIAN
      of the class's features, as the authors' code (tmllab/Moderate-DS, `get_median`); the
      paper's Eq. (1) writes the mean, available as center="mean".
  Distance score:          d(s_i) = || z_i - z^{y_i} ||_2.
  Eq. (2), the coreset:    sort all n distances ascending, d(s~_1) <= ... <= d(s~_n), and
      keep S* = {s~_{a+1}, ..., s~_{n-a}} with a = (n - m) / 2: the m examples whose distance
      lies closest (in rank) to the distance median M(d(s)), dropping both the easiest (closest
      to their class centre) and the hardest (farthest) examples.

a = (n - m) / 2 is a half-integer when n - m is odd: here floor((n - m) / 2) examples are
dropped from the low end and the rest, ceil((n - m) / 2), from the high end (the authors'
code rounds n * (0.5 -+ m / 2n) with numpy's round-half-even instead). Ties in distance:
lower example id first in the ascending order (a stable sort), as every selector here.
The median distance is over all n examples, not per class (as the paper and its code).
"""

from __future__ import annotations

import numpy as np

from datadiet_jax.prune.errors import SelectionError
from datadiet_jax.prune.validate import validate_keep_count, validate_labels

CENTERS = ("median", "mean")


def validate_features(features, num_examples: int | None = None) -> np.ndarray:
  """Checks f*[N, D] finite features; returns them as a float64 array."""
  arr = np.asarray(features)
  if arr.ndim != 2 or arr.shape[1] < 1:
    raise SelectionError(f"features must be a 2-D array [N, D] (one feature vector per "
                         f"example); got shape {arr.shape}")
  if not np.issubdtype(arr.dtype, np.floating):
    raise SelectionError(f"features must be floating point; got dtype {arr.dtype}")
  if num_examples is not None and arr.shape[0] != num_examples:
    raise SelectionError(f"features have {arr.shape[0]} rows but the dataset has "
                         f"{num_examples} examples: they belong to another dataset or order")
  bad = ~np.isfinite(arr).all(axis=1)
  if bad.any():
    raise SelectionError(f"features of {int(bad.sum())} examples are not finite (first: "
                         f"example {int(np.argmax(bad))}): the model that produced them diverged")
  return arr.astype(np.float64)


def class_center_distances(features, labels, center: str = "median") -> np.ndarray:
  """f64[N]: || z_i - z^{y_i} ||_2, the distance of each feature to its class centre.

  features: f*[N, D]; labels: i*[N]; center: "median" (component-wise median of the class's
  features, the authors' code) or "mean" (the paper's Eq. (1)).
  """
  if center not in CENTERS:
    raise SelectionError(f"unknown class centre {center!r}: use one of {', '.join(CENTERS)}")
  z = validate_features(features)
  labels = validate_labels(labels, z.shape[0])
  classes, inverse = np.unique(labels, return_inverse=True)
  reduce = np.median if center == "median" else np.mean
  centers = np.stack([reduce(z[inverse == c], axis=0) for c in range(len(classes))])
  return np.linalg.norm(z - centers[inverse], axis=1)


def moderate_window(distances, size: int) -> np.ndarray:
  """i32[size] sorted ids: Eq. (2)'s window of the `size` distances around the median rank
  (floor((n - size) / 2) dropped below it, the rest above; ties: lower id first)."""
  distances = np.asarray(distances, np.float64)
  n = distances.shape[0]
  size = validate_keep_count(size, n)
  low = (n - size) // 2
  order = np.argsort(distances, kind="stable")
  return np.sort(order[low:low + size]).astype(np.int32)


def keep_moderate(features, labels, size: int, center: str = "median") -> np.ndarray:
  """Moderate-DS: keeps the `size` examples whose distance to their class's median feature
  is closest to the median distance (Eq. (2) above).

  features: f*[N, D] penultimate features; labels: i*[N]; size: int in [1, N]
  -> i32[size] sorted kept ids.
  """
  return moderate_window(class_center_distances(features, labels, center), size)
