import math

import jax
import numpy as np
import pytest

from datadiet_jax.prune import SelectionError
from datadiet_jax.prune.dual_sampling import (dual_beta_params, dual_beta_weights,
                                              gumbel_top_k, keep_dual_beta, uniform_draws)


def _beta_pdf(x, a, b):
  """The Beta density written out: x^(a-1) (1-x)^(b-1) Gamma(a+b) / (Gamma(a) Gamma(b))."""
  log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
  return np.array([0.0 if (xi == 0 and a > 1) or (xi == 1 and b > 1) else
                   math.exp(log_norm + (a - 1) * math.log(xi) + (b - 1) * math.log1p(-xi))
                   for xi in x])


def _numpy_keep(scores, pred_mean, r, u, c_d=4.0, num_anchor=10):
  """The reference's beta_sampling with its draw replaced by A-Res keys u^(1/p) on u
  (Efraimidis-Spirakis; compared as log(u) / p, which orders the same and cannot underflow)."""
  anchor = pred_mean[np.argsort(scores)[-num_anchor:]].mean()
  y_b = 15 * (1 - anchor) * (1 - r ** c_d)
  y_a = 16 - y_b
  joint = _beta_pdf(pred_mean, y_a, y_b) * scores
  p = joint / joint.sum()
  n = len(scores)
  k = n - int(math.floor(round(n * r, 6)))
  with np.errstate(divide="ignore"):
    keys = np.log(u) / p
  assert len(np.unique(keys[np.isfinite(keys)])) == np.isfinite(keys).sum() >= k
  return np.sort(np.argsort(-keys)[:k])


def test_beta_params_constants():
  a, b = dual_beta_params(0.8, 0.0)
  assert (a, b) == pytest.approx((13.0, 3.0))
  a, b = dual_beta_params(0.2, 0.5, c_d=4)
  assert b == pytest.approx(15 * 0.8 * (1 - 0.5 ** 4)) and a + b == pytest.approx(16.0)


def test_weights_match_hand_computed_beta_density():
  # the two highest scores (ids 1, 2) have pred means .7, .9 -> mu = .8; r = 0 -> b = 3, a = 13
  scores = np.array([1.0, 3.0, 2.0, 0.5], np.float32)
  pred_mean = np.array([0.5, 0.7, 0.9, 0.0], np.float32)
  got = dual_beta_weights(scores, pred_mean, 0.0, num_anchor=2)
  x = pred_mean.astype(np.float64)
  raw = x ** 12 * (1 - x) ** 2 * (13 * 14 * 15 / 2) * scores  # Beta(13, 3) pdf * score
  np.testing.assert_allclose(got, raw / raw.sum(), rtol=1e-6)
  assert got[3] == 0.0


def test_keep_matches_numpy_reference_with_the_same_uniforms():
  rng = np.random.RandomState(5)
  n = 60
  scores = rng.gamma(2.0, 0.1, n).astype(np.float32)
  pred_mean = rng.beta(2.0, 2.0, n).astype(np.float32)
  for seed, r in enumerate((0.3, 0.5, 0.7, 0.9)):
    key = jax.random.key(seed)
    u = uniform_draws(key, n)
    want = _numpy_keep(scores.astype(np.float64), pred_mean.astype(np.float64), r, u)
    got = keep_dual_beta(scores, pred_mean, r, key)
    assert got.dtype == np.int32 and len(got) == n - math.floor(n * r + 1e-9)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(keep_dual_beta(scores, pred_mean, r, key), got)
  a = keep_dual_beta(scores, pred_mean, 0.5, jax.random.key(0))
  b = keep_dual_beta(scores, pred_mean, 0.5, jax.random.PRNGKey(1))
  assert not np.array_equal(a, b)


def test_high_pruning_moves_the_weight_to_high_prediction_means():
  rng = np.random.RandomState(0)
  scores = rng.gamma(2.0, 0.1, 500)
  pred_mean = rng.uniform(0.01, 0.99, 500)
  mean_at = [float(dual_beta_weights(scores, pred_mean, r) @ pred_mean) for r in (0.3, 0.7, 0.9)]
  assert mean_at[0] < mean_at[1] < mean_at[2]


def test_uniform_draws_are_in_the_open_unit_interval_and_uniform():
  u = uniform_draws(jax.random.key(3), 20000)
  assert u.dtype == np.float64 and (u > 0).all() and (u < 1).all()
  assert abs(u.mean() - 0.5) < 0.01 and len(np.unique(u)) == len(u)


def test_gumbel_top_k_is_successive_sampling():
  # P(first two draws = {i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j), as
  # np.random.choice(4, 2, p=p, replace=False) draws.
  p = np.array([0.1, 0.2, 0.3, 0.4])
  m = 200_000
  u = np.random.RandomState(1).uniform(size=(m, 4))
  ids = np.sort(gumbel_top_k(np.broadcast_to(p, (m, 4)), u, 2), axis=-1)
  for i in range(4):
    for j in range(i + 1, 4):
      want = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
      freq = np.mean((ids[:, 0] == i) & (ids[:, 1] == j))
      assert abs(freq - want) < 5 * math.sqrt(want * (1 - want) / m), (i, j, freq, want)


def _ok():
  rng = np.random.RandomState(2)
  return rng.uniform(0.1, 1, 20), rng.uniform(0.05, 0.95, 20)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1, float("nan"), 1.5])
def test_bad_fraction(fraction):
  scores, pred_mean = _ok()
  with pytest.raises(SelectionError, match="prune_fraction"):
    keep_dual_beta(scores, pred_mean, fraction, jax.random.key(0))


def test_bad_scores_and_pred_means():
  scores, pred_mean = _ok()
  key = jax.random.key(0)
  bad = scores.copy()
  bad[3] = np.nan
  with pytest.raises(SelectionError, match="NaN"):
    keep_dual_beta(bad, pred_mean, 0.5, key)
  bad[3] = -0.2
  with pytest.raises(SelectionError, match="negative"):
    keep_dual_beta(bad, pred_mean, 0.5, key)
  bad = pred_mean.copy()
  bad[0] = 1.2
  with pytest.raises(SelectionError, match=r"outside \[0, 1\]"):
    keep_dual_beta(scores, bad, 0.5, key)
  with pytest.raises(SelectionError, match="entries"):
    keep_dual_beta(scores, pred_mean[:-1], 0.5, key)
  with pytest.raises(SelectionError, match="key"):
    keep_dual_beta(scores, pred_mean, 0.5, 3)
  with pytest.raises(SelectionError, match="c_d"):
    keep_dual_beta(scores, pred_mean, 0.5, key, c_d=0.0)
  with pytest.raises(SelectionError, match="num_anchor"):
    keep_dual_beta(scores, pred_mean, 0.5, key, num_anchor=0)


def test_degenerate_beta_and_too_few_positive_weights():
  key = jax.random.key(0)
  scores = np.array([3.0, 2.0, 1.0, 0.0])
  with pytest.raises(SelectionError, match="b = 15"):  # the anchors are all predicted at 1
    keep_dual_beta(scores, np.array([1.0, 1.0, 0.5, 0.5]), 0.5, key, num_anchor=2)
  with pytest.raises(SelectionError, match="infinite Beta density"):  # b < 1 and x = 1
    keep_dual_beta(scores, np.array([0.99, 0.99, 1.0, 0.5]), 0.5, key, num_anchor=2)
  with pytest.raises(SelectionError, match="positive Beta sampling weight"):  # score 0 at r=0
    keep_dual_beta(scores, np.array([0.5, 0.6, 0.7, 0.5]), 0.0, key, num_anchor=2)
