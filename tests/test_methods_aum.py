import numpy as np

from datadiet_jax.scores.aum import aum_score, init_aum, update_aum


def _numpy_aum(traj, labels):
  """traj: [T, N, C] logits per epoch -> [N] mean over epochs of z_y - max other."""
  t, n, c = traj.shape
  out = np.zeros(n)
  for i in range(n):
    total = 0.0
    for e in range(t):
      z = traj[e, i]
      total += z[labels[i]] - max(z[k] for k in range(c) if k != labels[i])
    out[i] = total / t
  return out


def test_aum_matches_numpy_loop_over_shuffled_batches():
  rng = np.random.RandomState(0)
  t, n, c, b = 4, 12, 5, 4
  traj = rng.randn(t, n, c).astype(np.float32)
  labels = rng.randint(0, c, n).astype(np.int32)
  state = init_aum(n)
  for e in range(t):
    order = rng.permutation(n)
    for s in range(0, n, b):
      ids = order[s:s + b]
      state = update_aum(state, ids, traj[e, ids], labels[ids])
  np.testing.assert_allclose(np.asarray(aum_score(state)), _numpy_aum(traj, labels), rtol=1e-5,
                             atol=1e-6)


def test_aum_hand_case_and_unvisited():
  state = init_aum(2)
  state = update_aum(state, np.array([0]), np.array([[3.0, 1.0, 0.0]]), np.array([0]))
  state = update_aum(state, np.array([0]), np.array([[0.0, 2.0, 1.0]]), np.array([0]))
  score = np.asarray(aum_score(state))
  assert score[0] == (2.0 + -2.0) / 2
  assert np.isnan(score[1])
