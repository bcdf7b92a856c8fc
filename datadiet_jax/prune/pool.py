"""Choosing examples from a candidate pool by score (e.g. entropy or EL2N of weak labels).

Used for the "select from a large pool" setting ("Comprehensive Benchmarking of Entropy and
Margin Based Scoring Metrics", 2023): pick the k pool examples with the highest scores to
add to training, against a random pick. Indices are *pool* indices, returned sorted.
"""

from __future__ import annotations

import numpy as np

from datadiet_jax.prune.errors import SelectionError
from datadiet_jax.prune.select import keep_easiest, keep_hardest, keep_random

POOL_METHODS = ("top", "bottom")


def select_from_pool(pool_scores, k: int, method: str = "top") -> np.ndarray:
  """Picks k pool examples by score.

  pool_scores: f32[P] (+inf allowed: highest); k: int in [1, P];
  method: "top" (k highest scores) or "bottom" (k lowest) -> i32[k] sorted pool indices.
  Ties at the cut: lower pool indices kept.
  """
  if method not in POOL_METHODS:
    raise SelectionError(f"unknown pool method {method!r}: use one of {', '.join(POOL_METHODS)}")
  return (keep_hardest if method == "top" else keep_easiest)(pool_scores, k)


def random_from_pool(pool_size: int, k: int, seed: int) -> np.ndarray:
  """k uniform random pool indices: `RandomState(seed).choice(P, k, replace=False)`, sorted."""
  return keep_random(pool_size, k, seed)


def entropy_from_probs(probs) -> np.ndarray:
  """Predictive entropy -sum_c p log p (nats), with 0 log 0 = 0.

  probs: f32[N, C] rows of class probabilities -> f32[N] (f64 in, f64 out).
  """
  probs = np.asarray(probs)
  if probs.ndim != 2:
    raise SelectionError(f"probs must be [N, C] class probabilities; got shape {probs.shape}")
  if not np.issubdtype(probs.dtype, np.floating):
    probs = probs.astype(np.float32)
  if np.isnan(probs).any() or (probs < 0).any():
    raise SelectionError("probs contains NaN or negative values: pass softmax outputs, not "
                         "logits")
  terms = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0)
  return (-terms.sum(axis=1)).astype(probs.dtype)
