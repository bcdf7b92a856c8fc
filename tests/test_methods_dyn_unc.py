import numpy as np

from datadiet_jax.scores.dyn_unc import dyn_unc_score, init_dyn_unc, update_dyn_unc


def _numpy_dyn_unc(traj, labels, j):
  t, n, _ = traj.shape
  p = np.exp(traj - traj.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  p_true = p[:, np.arange(n), labels]  # [T, N]
  out = np.zeros(n)
  for i in range(n):
    stds = [np.std(p_true[k:k + j, i], ddof=1) for k in range(t - j + 1)]
    out[i] = np.mean(stds)
  return out


def test_dyn_unc_matches_numpy_loop():
  rng = np.random.RandomState(1)
  t, n, c, b, j = 7, 10, 4, 3, 3
  traj = (2 * rng.randn(t, n, c)).astype(np.float32)
  labels = rng.randint(0, c, n).astype(np.int32)
  state = init_dyn_unc(n, j)
  for e in range(t):
    order = rng.permutation(n)
    for s in range(0, n, b):
      ids = order[s:s + b]
      state = update_dyn_unc(state, ids, traj[e, ids], labels[ids])
  np.testing.assert_allclose(np.asarray(dyn_unc_score(state)), _numpy_dyn_unc(traj, labels, j),
                             rtol=1e-4, atol=1e-6)


def test_dyn_unc_hand_case():
  # two classes, logits (0, log 3) -> p_true(class 1) = 0.75; (0, 0) -> 0.5. window 2.
  state = init_dyn_unc(1, 2)
  for z in ([0.0, np.log(3.0)], [0.0, 0.0], [0.0, 0.0]):
    state = update_dyn_unc(state, np.array([0]), np.array([z], np.float32), np.array([1]))
  # windows (0.75, 0.5): std = 0.25/sqrt(2); (0.5, 0.5): 0 -> mean 0.125/sqrt(2).
  np.testing.assert_allclose(np.asarray(dyn_unc_score(state))[0], 0.125 / np.sqrt(2), rtol=1e-5)
