import numpy as np

from datadiet_jax.scores.dual import dual_prediction_mean, dual_score, init_dual, update_dual


def test_dual_matches_numpy_loop():
  rng = np.random.RandomState(2)
  t, n, c, b, j = 6, 9, 3, 4, 3
  traj = (2 * rng.randn(t, n, c)).astype(np.float32)
  labels = rng.randint(0, c, n).astype(np.int32)
  state = init_dual(n, j)
  for e in range(t):
    order = rng.permutation(n)
    for s in range(0, n, b):
      ids = order[s:s + b]
      state = update_dual(state, ids, traj[e, ids], labels[ids])
  p = np.exp(traj) / np.exp(traj).sum(-1, keepdims=True)
  p_true = p[:, np.arange(n), labels]
  want = [np.mean([np.std(p_true[k:k + j, i], ddof=1) * (1 - np.mean(p_true[k:k + j, i]))
                   for k in range(t - j + 1)]) for i in range(n)]
  np.testing.assert_allclose(np.asarray(dual_score(state)), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dual_prediction_mean(state)), p_true.mean(0),
                             rtol=1e-5)


def test_dual_hand_case():
  # p_true 0.75 then 0.5 (window 2): std 0.25/sqrt(2), mean 0.625 -> 0.25/sqrt(2) * 0.375.
  state = init_dual(1, 2)
  for z in ([0.0, np.log(3.0)], [0.0, 0.0]):
    state = update_dual(state, np.array([0]), np.array([z], np.float32), np.array([1]))
  np.testing.assert_allclose(np.asarray(dual_score(state))[0], 0.25 / np.sqrt(2) * 0.375,
                             rtol=1e-5)


def test_dual_prediction_mean_nan_where_never_visited():
  state = init_dual(3, 2)
  state = update_dual(state, np.array([2]), np.array([[0.0, np.log(3.0)]], np.float32),
                      np.array([1]))
  got = np.asarray(dual_prediction_mean(state))
  assert np.isnan(got[:2]).all()
  np.testing.assert_allclose(got[2], 0.75, rtol=1e-6)
