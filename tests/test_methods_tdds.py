import jax
import numpy as np
import pytest

from datadiet_jax.scores.tdds import init_tdds, tdds_score, update_tdds


def _numpy_tdds(traj, window, decay):
  """The authors' loop (importance_evaluation.py) over per-epoch logits traj: [T, N, C]."""
  t = traj.shape[0]
  p = np.exp(traj - traj.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True)).astype(np.float64)
  total = 0.0
  for k in range(t - window + 1):
    w = p[k:k + window]
    kd = np.array([np.abs(w[j + 1] * (np.log(w[j + 1] + 1e-8) - np.log(w[j] + 1e-8))).sum(-1)
                   for j in range(window - 1)])  # [K-1, N]
    avg = kd.sum(0) / (window - 1)
    norm = np.linalg.norm(kd - avg, axis=0)
    total = total + norm * decay * (1 - decay) ** (t - window - k)
  return total


@pytest.mark.parametrize("window,decay", [(3, 0.9), (4, 0.5)])
def test_tdds_matches_numpy_loop_at_every_epoch(window, decay):
  rng = np.random.RandomState(3)
  t, n, c, b = 8, 11, 5, 4
  traj = (2 * rng.randn(t, n, c)).astype(np.float32)
  state = init_tdds(n, c, window, decay)
  step = jax.jit(update_tdds)
  for e in range(t):
    order = rng.permutation(n)
    for s in range(0, n, b):  # chunks of distinct ids, the last one short
      ids = order[s:s + b]
      state = step(state, ids, traj[e, ids], np.zeros(len(ids), np.int32))
    got = np.asarray(tdds_score(state))
    if e + 1 < window:
      assert np.isnan(got).all()
    else:
      np.testing.assert_allclose(got, _numpy_tdds(traj[:e + 1], window, decay), rtol=2e-4,
                                 atol=1e-6)


def test_tdds_hand_case():
  # probs (.5,.5), (.5,.5), (.75,.25), (.75,.25): d = (0, d1, 0), d1 = .75 ln 1.5 + .25 ln 2.
  # K=3: windows (0, d1), (d1, 0) both have norm d1/sqrt(2); beta=.5, T=4 weights .25, .5.
  state = init_tdds(1, 2, window_size=3, decay=0.5)
  for z in ([0.0, 0.0], [0.0, 0.0], [np.log(3.0), 0.0], [np.log(3.0), 0.0]):
    state = update_tdds(state, np.array([0]), np.array([z], np.float32))
  d1 = 0.75 * np.log(1.5) + 0.25 * np.log(2.0)
  np.testing.assert_allclose(np.asarray(tdds_score(state))[0], 0.75 * d1 / np.sqrt(2),
                             rtol=1e-5)


def test_tdds_unvisited_examples_are_untouched():
  state = init_tdds(4, 3, window_size=3)
  rng = np.random.RandomState(0)
  for _ in range(3):
    state = update_tdds(state, np.array([1, 3]), rng.randn(2, 3).astype(np.float32))
  score = np.asarray(tdds_score(state))
  assert np.isnan(score[[0, 2]]).all() and np.isfinite(score[[1, 3]]).all()
  np.testing.assert_array_equal(np.asarray(state.visits), [0, 3, 0, 3])


@pytest.mark.parametrize("kwargs", [dict(window_size=2), dict(decay=0.0), dict(decay=1.5)])
def test_tdds_bad_config(kwargs):
  with pytest.raises(ValueError):
    init_tdds(5, 3, **kwargs)


def test_tdds_saturated_softmax_uses_the_eps():
  # (1, 0) -> (.5, .5) -> (.5, .5): the zero probability enters as log(0 + 1e-8).
  state = init_tdds(1, 2, window_size=3, decay=0.9)
  for z in ([0.0, -200.0], [0.0, 0.0], [0.0, 0.0]):
    state = update_tdds(state, np.array([0]), np.array([z], np.float32))
  e = 1e-8
  d0 = abs(0.5 * (np.log(0.5 + e) - np.log(1 + e))) + abs(0.5 * (np.log(0.5 + e) - np.log(e)))
  np.testing.assert_allclose(np.asarray(tdds_score(state))[0], 0.9 * d0 / np.sqrt(2), rtol=1e-5)
