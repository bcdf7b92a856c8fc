"""Moderate-DS (prune/moderate.py) and D2 pruning (prune/d2.py) against brute-force numpy
loops written out here (per-example Python loops, full pairwise distance matrices)."""

import numpy as np
import pytest

from datadiet_jax.prune import SelectionError
from datadiet_jax.prune.d2 import keep_d2, knn
from datadiet_jax.prune.moderate import class_center_distances, keep_moderate


# ------------------------------------------------------------------ brute-force references

def moderate_reference(features, labels, size):
  """Loop over examples: distance to the component-wise median of its class; keep the
  window of `size` ranks around the median rank, (n - size) // 2 dropped below."""
  features = np.asarray(features, np.float64)
  n = len(labels)
  distance = np.zeros(n)
  for i in range(n):
    members = [j for j in range(n) if labels[j] == labels[i]]
    center = [np.median([features[j, c] for j in members]) for c in range(features.shape[1])]
    distance[i] = np.sqrt(sum((features[i, c] - center[c]) ** 2
                              for c in range(features.shape[1])))
  ranked = sorted(range(n), key=lambda i: (distance[i], i))
  low = (n - size) // 2
  return np.sort(ranked[low:low + size]), distance


def d2_reference(features, scores, size, k, gamma_f, gamma_r, symmetric=True,
                 hard_prune_fraction=0.0):
  features, scores = np.asarray(features, np.float64), np.asarray(scores, np.float64)
  n = len(scores)
  dropped = int(np.floor(round(n * hard_prune_fraction, 6)))
  by_hardness = sorted(range(n), key=lambda i: (-scores[i], i))
  keep = sorted(by_hardness[dropped:])
  z, s = features[keep], scores[keep]
  m = len(keep)
  dist = np.stack([np.sqrt(((z - z[i]) ** 2).sum(axis=1)) for i in range(m)])  # row by row
  neighbors = [set() for _ in range(m)]
  for i in range(m):
    nearest = sorted((j for j in range(m) if j != i), key=lambda j: (dist[i, j], j))[:k]
    for j in nearest:
      neighbors[i].add(j)
      if symmetric:
        neighbors[j].add(i)
  x = [s[i] + sum(np.exp(-gamma_f * dist[i, j]) * s[j] for j in neighbors[i])
       for i in range(m)]
  selected = []
  for _ in range(size):
    best = None
    for i in range(m):
      if i not in selected and (best is None or x[i] > x[best]):
        best = i
    selected.append(best)
    for j in neighbors[best]:
      x[j] = x[j] - np.exp(-gamma_r * dist[best, j]) * x[best]
  return np.sort(np.asarray(keep)[selected])


def _clusters(seed, n=200, d=6, classes=4):
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, classes, n)
  centers = rng.normal(0, 3, (classes, d))
  features = centers[labels] + rng.normal(0, 1, (n, d)) * rng.uniform(0.3, 2.0, (n, 1))
  return features.astype(np.float32), labels.astype(np.int32)


# ---------------------------------------------------------------------------- Moderate-DS

@pytest.mark.parametrize("size", [1, 57, 100, 143, 200])
def test_moderate_matches_the_brute_force_loop(size):
  features, labels = _clusters(0, n=120)
  size = min(size, 120)
  expected, distance = moderate_reference(features, labels, size)
  np.testing.assert_allclose(class_center_distances(features, labels), distance, rtol=1e-12)
  np.testing.assert_array_equal(keep_moderate(features, labels, size), expected)


def test_moderate_drops_both_ends():
  features, labels = _clusters(1)
  kept = keep_moderate(features, labels, 100)
  distance = class_center_distances(features, labels)
  dropped = np.setdiff1d(np.arange(200), kept)
  assert distance[dropped].min() < distance[kept].min()   # the easiest are dropped
  assert distance[dropped].max() > distance[kept].max()   # and the hardest
  assert kept.dtype == np.int32 and np.all(np.diff(kept) > 0)


def test_moderate_bad_input():
  features, labels = _clusters(2, n=20)
  with pytest.raises(SelectionError, match="2-D array"):
    keep_moderate(features[:, 0], labels, 5)
  with pytest.raises(SelectionError, match="not finite"):
    keep_moderate(np.where(np.arange(20)[:, None] == 3, np.nan, features), labels, 5)
  with pytest.raises(SelectionError, match="keep at least 1"):
    keep_moderate(features, labels, 0)
  with pytest.raises(SelectionError, match="unknown class centre"):
    class_center_distances(features, labels, center="mode")


# ------------------------------------------------------------------------------------- D2

def test_knn_matches_the_pairwise_distance_matrix():
  features, _ = _clusters(3)
  ids, dist = knn(features, 7, chunk_size=48)  # chunks of 48: the last one is padded
  z = features.astype(np.float64)
  full = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
  np.fill_diagonal(full, np.inf)
  for i in range(len(z)):
    expected = sorted(range(len(z)), key=lambda j: (full[i, j], j))[:7]
    np.testing.assert_array_equal(ids[i], expected)
    np.testing.assert_allclose(dist[i], full[i, expected], rtol=1e-12)


@pytest.mark.parametrize("k,gamma_f,gamma_r,symmetric,beta,size", [
    (5, 1.0, 0.1, True, 0.0, 60),
    (3, 0.5, 1.0, False, 0.0, 120),
    (8, 2.0, 0.3, True, 0.2, 40),
    (1, 1.0, 5.0, False, 0.1, 179),
])
def test_d2_matches_the_brute_force_loop(k, gamma_f, gamma_r, symmetric, beta, size):
  features, _ = _clusters(4)
  scores = np.random.RandomState(5).gamma(2.0, 0.3, 200).astype(np.float32)
  got = keep_d2(features, scores, size, k, gamma_f, gamma_r, symmetric, beta, chunk_size=64)
  expected = d2_reference(features, scores, size, k, gamma_f, gamma_r, symmetric, beta)
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == np.int32 and len(np.unique(got)) == size


def test_d2_spreads_over_a_duplicated_hard_cluster():
  """Ten copies of one hard example: hardest-first keeps them all, D2 (reverse message
  passing down-weights a pick's neighbours) keeps a few and spreads the rest."""
  features, _ = _clusters(6)
  scores = np.random.RandomState(7).uniform(0, 1, 200)
  features[:10] = features[0]
  scores[:10] = 5.0
  kept = keep_d2(features, scores, 20, num_neighbors=9, gamma_forward=1.0, gamma_reverse=0.01)
  assert 1 <= np.sum(kept < 10) < 10


@pytest.mark.parametrize("options,match", [
    ({"num_neighbors": 0}, "k >= 1"),
    ({"num_neighbors": 2.5}, "k >= 1"),
    ({"gamma_forward": 0.0}, "gamma_forward must be a finite number > 0"),
    ({"gamma_reverse": -1.0}, "gamma_reverse must be a finite number > 0"),
    ({"gamma_reverse": float("nan")}, "gamma_reverse"),
    ({"num_neighbors": 30}, "needs more than 30 examples"),
])
def test_d2_bad_options(options, match):
  features, _ = _clusters(8, n=30)
  with pytest.raises(SelectionError, match=match):
    keep_d2(features, np.ones(30), 10, **options)


def test_d2_bad_scores():
  features, _ = _clusters(8, n=30)
  with pytest.raises(SelectionError, match=r"\+inf"):
    keep_d2(features, np.where(np.arange(30) == 2, np.inf, 1.0), 10)
  with pytest.raises(SelectionError, match="30 entries but the dataset has 29"):
    keep_d2(features[:29], np.ones(30), 10)
