"""Other codebases' score files through load_scores: DUAL's per-seed folder of
<method>_score.npy and <method>_mask.npy, written here the way its importance_evaluation.py
writes them (np.save of torch tensors: `score`, `score.sort()[1]`)."""

import os

import numpy as np
import pytest

from datadiet_jax.prune.select import keep_easiest, keep_hardest
from datadiet_jax.scores import ScoreError, load_scores

torch = pytest.importorskip("torch")
N = 50


def _dual_folder(tmp_path, with_scores=True):
  """A DUAL seed folder for N examples: EL2N from softmaxes of random logits (DUAL's el2n:
  torch.norm(one_hot - softmax)), forgetting counts from a random correctness trajectory
  (DUAL's forgetting: correct -> incorrect transitions, an int64 tensor), and each score's
  index list."""
  folder = tmp_path / "generated" / "cifar10" / "42"
  folder.mkdir(parents=True)
  g = torch.Generator().manual_seed(0)
  logits, targets = torch.randn(N, 10, generator=g), torch.randint(0, 10, (N,), generator=g)
  el2n = torch.norm(torch.nn.functional.one_hot(targets, 10) - logits.softmax(-1), p=2, dim=-1)
  correct = torch.rand(12, N, generator=g) > 0.5
  forgetting = (correct[:-1] & ~correct[1:]).sum(dim=0)
  for stem, score in (("el2n", el2n), ("forgetting", forgetting)):
    if with_scores:
      np.save(folder / f"{stem}_score.npy", score)
    np.save(folder / f"{stem}_mask.npy", score.sort(stable=True)[1])
  return str(folder), el2n.numpy(), forgetting.numpy()


def test_dual_scores_load_as_ours_whatever_the_step(tmp_path):
  folder, el2n, forgetting = _dual_folder(tmp_path)
  for step in (0, 20, 7800):  # DUAL's files carry no step
    loaded = load_scores(folder, "el2n", step, N)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, el2n.astype(np.float32))
  # The original's alias names the same file.
  np.testing.assert_array_equal(load_scores(folder, "error_l2_norm", 20, N), el2n)
  counts = load_scores(folder, "forgetting", 0, N)
  np.testing.assert_array_equal(counts, forgetting.astype(np.float32))
  assert counts.max() >= 2  # real counts, not flags
  # A score DUAL does not write is reported missing, with the candidates looked for.
  with pytest.raises(ScoreError, match=r"no 'entropy' scores .*entropy_score\.npy"):
    load_scores(folder, "entropy", 20, N)
  with pytest.raises(ScoreError, match="has 50 scores but the dataset has 60"):
    load_scores(folder, "el2n", 20, 60)


def test_an_index_list_alone_reads_as_ranks_that_prune_as_the_scores(tmp_path):
  folder, el2n, forgetting = _dual_folder(tmp_path, with_scores=False)
  ranks = load_scores(folder, "el2n", 20, N)
  # Brute force: an example's rank is how many examples score below it (EL2N is distinct).
  assert len(np.unique(el2n)) == N
  expected = np.array([np.sum(el2n < el2n[i]) for i in range(N)], np.float32)
  np.testing.assert_array_equal(ranks, expected)
  for size in (1, 17, 49):
    assert set(keep_hardest(ranks, size)) == set(keep_hardest(el2n, size))
    assert set(keep_easiest(ranks, size)) == set(keep_easiest(el2n, size))
  # Forgetting has ties: the ranks follow DUAL's stable sort, so ids with equal counts keep
  # their order, and every higher count ranks above every lower one.
  ranks = load_scores(folder, "forgetting", 0, N)
  for i in range(N):
    below = np.sum(forgetting < forgetting[i])
    tied_before = np.sum((forgetting == forgetting[i]) & (np.arange(N) < i))
    assert ranks[i] == below + tied_before
  # The file itself, passed directly, reads the same way.
  np.testing.assert_array_equal(load_scores(os.path.join(folder, "el2n_mask.npy"), "el2n",
                                            20, N), expected)


@pytest.mark.parametrize("bad,message", [
    (np.array([0, 1, 1, 3]), r"not a permutation of the example ids 0\.\.3 \(0 out of range, "
                             r"1 missing, 1 repeated\)"),
    (np.array([0, 1, 2, 4]), r"\(1 out of range, 1 missing, 0 repeated\)"),
    (np.array([0, -1, 2, 3]), r"\(1 out of range, 1 missing, 0 repeated\)"),
    (np.array([0.0, 1.0, 2.0, 3.0]), r"integer example ids, got float64"),
    (np.arange(4).reshape(2, 2), r"1-d array .* shape \[2, 2\]"),
])
def test_a_broken_index_list_is_a_clear_error(tmp_path, bad, message):
  path = str(tmp_path / "el2n_mask.npy")
  np.save(path, bad)
  with pytest.raises(ScoreError, match=message):
    load_scores(path, "el2n", 0)


def test_an_index_list_of_another_dataset_is_the_length_error(tmp_path):
  path = str(tmp_path / "el2n_mask.npy")
  np.save(path, np.array([3, 0, 2, 1]))
  np.testing.assert_array_equal(load_scores(path, "el2n", 0, 4), [1, 3, 2, 0])
  with pytest.raises(ScoreError, match="has 4 scores but the dataset has 5 examples"):
    load_scores(path, "el2n", 0, 5)


# DUAL's trajectory files: per-epoch train-mode logits of every example (its train.py saves
# `<epoch>_Output.npy`); its importance_evaluation.py turns them into score files.
EPOCHS, CLASSES, WINDOW, DUAL_T = 14, 5, 10, 12


def _trajectory():
  """f32[EPOCHS, N, CLASSES] logits drifting towards the label, i32[N] labels."""
  g = torch.Generator().manual_seed(1)
  targets = torch.randint(0, CLASSES, (N,), generator=g)
  drift = torch.nn.functional.one_hot(targets, CLASSES) * torch.linspace(0, 3, EPOCHS)[:, None, None]
  logits = 1.5 * torch.randn(EPOCHS, N, CLASSES, generator=g) + drift
  return logits, targets


def _dual_dynamics_folder(tmp_path, logits, targets, tdds_variants=((10, 5),)):
  """The trajectory scores written as DUAL writes them, computed here with torch loops
  over epochs and windows (std with Bessel's correction, x 10, as DUAL stores them)."""
  folder = tmp_path / "generated" / "cifar10" / "7"
  folder.mkdir(parents=True)
  probs = logits.softmax(-1)
  target_probs = probs[:, torch.arange(N), targets]  # [EPOCHS, N]

  def windowed(p, weight):
    per_window = [p[k:k + WINDOW].std(dim=0) * 10 * weight(p[k:k + WINDOW].mean(dim=0))
                  for k in range(len(p) - WINDOW + 1)]
    return torch.stack(per_window).mean(dim=0)

  dynunc = windowed(target_probs, lambda mean: 1.0)
  dual = windowed(target_probs[:DUAL_T], lambda mean: 1 - mean)
  last = probs[-1].clone()
  true_prob = last[torch.arange(N), targets].clone()
  last[torch.arange(N), targets] = 0
  aum = true_prob - last.max(dim=1)[0]  # the last epoch's margin, as DUAL's aum() leaves it
  files = {"dynunc": dynunc, "dual": dual, "aum": aum}
  for stem, score in files.items():
    name = "dual_score_T%d.npy" % DUAL_T if stem == "dual" else f"{stem}_score.npy"
    mask = "dual_mask_T%d.npy" % DUAL_T if stem == "dual" else f"{stem}_mask.npy"
    np.save(folder / name, score)
    np.save(folder / mask, score.sort(stable=True)[1])
  for t, j in tdds_variants:
    tdds = torch.rand(N, generator=torch.Generator().manual_seed(t * 100 + j))
    np.save(folder / f"tdds_{t}_{j}_score.npy", tdds.numpy())
    np.save(folder / f"tdds_{t}_{j}_mask.npy", tdds.argsort().numpy())
  return str(folder), {k: v.numpy() for k, v in files.items()}


def _accumulated(logits, targets, epochs):
  """Our accumulators fed one visit per example per epoch of the same logits."""
  import jax.numpy as jnp
  from datadiet_jax.scores.dual import dual_score, init_dual, update_dual
  from datadiet_jax.scores.dyn_unc import dyn_unc_score, init_dyn_unc, update_dyn_unc
  dyn, du = init_dyn_unc(N, WINDOW), init_dual(N, WINDOW)
  ids, labels = jnp.arange(N), jnp.asarray(targets.numpy())
  out = {}
  for epoch in range(max(epochs)):
    batch = jnp.asarray(logits[epoch].numpy())
    dyn, du = update_dyn_unc(dyn, ids, batch, labels), update_dual(du, ids, batch, labels)
    if epoch + 1 == epochs[0]:
      out["dual"] = np.asarray(dual_score(du))
    if epoch + 1 == epochs[1]:
      out["dyn_unc"] = np.asarray(dyn_unc_score(dyn))
  return out


def test_dual_trajectory_scores_read_as_our_accumulators_give_them(tmp_path, caplog):
  logits, targets = _trajectory()
  folder, dual_files = _dual_dynamics_folder(tmp_path, logits, targets)
  ours = _accumulated(logits, targets, (DUAL_T, EPOCHS))
  # Dyn-Unc and DUAL: DUAL's files are 10 x our definitions over the same epochs.
  for score in ("dyn_unc", "dual"):
    loaded = load_scores(folder, score, 1234, N)
    assert loaded.dtype == np.float32 and np.all(loaded > 0)
    np.testing.assert_allclose(loaded, ours[score], rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(load_scores(folder, "dyn_unc", 0, N),
                             dual_files["dynunc"] / 10, rtol=1e-6)
  # AUM: DUAL's file is the last epoch's probability margin (high = easy); it reads negated,
  # so higher = harder as our -AUM files, with a warning that the quantity differs.
  with caplog.at_level("WARNING", logger="datadiet_jax"):
    aum = load_scores(folder, "aum", 0, N)
  assert "last epoch's softmax margin" in caplog.text
  last = logits[-1].softmax(-1).numpy().astype(np.float64)
  onehot = np.eye(CLASSES, dtype=bool)[targets.numpy()]
  margin = last[onehot] - np.where(onehot, -np.inf, last).max(1)
  np.testing.assert_allclose(aum, -margin, rtol=1e-5, atol=1e-7)
  # Index lists alone: ranks in our orientation (reversed for aum), pruning as the scores.
  for name in ("aum_score.npy", f"dual_score_T{DUAL_T}.npy", "dynunc_score.npy"):
    os.remove(os.path.join(folder, name))
  for score, expected in (("aum", -margin), ("dual", ours["dual"]), ("dyn_unc", ours["dyn_unc"])):
    ranks = load_scores(folder, score, 0, N)
    assert len(np.unique(expected)) == N
    np.testing.assert_array_equal(ranks, [np.sum(expected < e) for e in expected])
    for size in (1, 13, 49):
      assert set(keep_hardest(ranks, size)) == set(keep_hardest(expected, size))


def test_dual_variants_are_ambiguous_and_a_file_of_another_score_is_refused(tmp_path):
  logits, targets = _trajectory()
  folder, _ = _dual_dynamics_folder(tmp_path, logits, targets, tdds_variants=((10, 5), (20, 10)))
  with pytest.raises(ScoreError, match=r"holds 2 of DUAL's 'tdds' files \(tdds_10_5_score\.npy, "
                                       r"tdds_20_10_score\.npy\).*pass the file itself"):
    load_scores(folder, "tdds", 0, N)
  # One variant passed as a file reads as stored (DUAL's TDDS is kept high-first, as ours).
  path = os.path.join(folder, "tdds_20_10_score.npy")
  np.testing.assert_array_equal(load_scores(path, "tdds", 0, N), np.load(path))
  with pytest.raises(ScoreError, match=r"aum_score\.npy is DUAL's 'aum' file, asked for as "
                                       r"'el2n'"):
    load_scores(os.path.join(folder, "aum_score.npy"), "el2n", 0, N)
  with pytest.raises(ScoreError, match=r"DUAL's 'dyn_unc' file, asked for as 'aum'"):
    load_scores(os.path.join(folder, "dynunc_mask.npy"), "aum", 0, N)
