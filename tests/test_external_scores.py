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
