"""Tests for datadiet_jax.prune: selectors against brute force, seeds, quotas, CCS, noise."""

import itertools
import math

import numpy as np
import pytest

from datadiet_jax import prune
from datadiet_jax.prune import SelectionError

INF = math.inf


# ------------------------------------------------------------------------------ references

def _key(values):
  """Sum that treats +inf exactly: (number of infs, finite sum)."""
  return (sum(v == INF for v in values), sum(v for v in values if v != INF))


def brute_best_subset(scores, k, maximise):
  """The lexicographically smallest k-subset with the max (min) total score.

  Lexicographically smallest == "among ties at the cut, the lower ids are kept".
  """
  best, best_key = None, None
  for subset in itertools.combinations(range(len(scores)), k):  # lexicographic order
    key = _key([scores[i] for i in subset])
    if best is None or (key > best_key if maximise else key < best_key):
      best, best_key = subset, key
  return list(best)


def brute_window(scores, offset, size, ascending):
  """Python sort of (score, id) pairs: ties -> lower id first in either direction."""
  pairs = sorted(range(len(scores)),
                 key=lambda i: ((scores[i] if ascending else -scores[i]), i))
  return sorted(pairs[offset:offset + size])


TIE_SCORES = [
    [3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [2.0, INF, 1.0, INF, 2.0, 5.0],
    [-2.0, 1.0, 2.0, -1.0, 0.0, -2.0, 2.0],
]


# ---------------------------------------------------------------------------- max/min/abs

@pytest.mark.parametrize("scores", TIE_SCORES)
def test_keep_hardest_and_easiest_match_brute_force(scores):
  for k in range(1, len(scores) + 1):
    got_max = prune.keep_hardest(np.array(scores, np.float32), k)
    got_min = prune.keep_easiest(np.array(scores, np.float32), k)
    assert got_max.dtype == np.int32 and got_min.dtype == np.int32
    assert got_max.tolist() == brute_best_subset(scores, k, maximise=True)
    assert got_min.tolist() == brute_best_subset(scores, k, maximise=False)


@pytest.mark.parametrize("scores", TIE_SCORES)
def test_abs_variants_match_brute_force(scores):
  absolute = [abs(s) for s in scores]
  for k in range(1, len(scores) + 1):
    assert prune.keep_max_abs(scores, k).tolist() == brute_best_subset(absolute, k, True)
    assert prune.keep_min_abs(scores, k).tolist() == brute_best_subset(absolute, k, False)


def test_tie_rule_lower_ids_kept_and_inf_is_hardest():
  scores = np.array([1.0, 5.0, 5.0, 5.0, INF, 0.0])
  assert prune.keep_hardest(scores, 3).tolist() == [1, 2, 4]  # inf, then the lower two 5s
  assert prune.keep_easiest(scores, 3).tolist() == [0, 1, 5]  # 0, 1, then the lowest 5
  assert prune.keep_easiest(scores, 6).tolist() == list(range(6))
  ids = prune.keep_hardest(np.array([3, 1, 2], np.int32), 2)  # integer scores accepted
  assert ids.tolist() == [0, 2] and np.all(np.diff(ids) > 0)


def test_random_large_array_matches_sort_reference():
  scores = np.random.RandomState(0).randint(0, 20, size=500).astype(np.float32)
  ref = sorted(range(500), key=lambda i: (-scores[i], i))[:137]
  assert prune.keep_hardest(scores, 137).tolist() == sorted(ref)


# --------------------------------------------------------------------------------- offset

@pytest.mark.parametrize("scores", TIE_SCORES)
@pytest.mark.parametrize("ascending", [False, True])
def test_offset_window_matches_python_loop(scores, ascending):
  n = len(scores)
  for offset in range(n):
    for size in range(1, n - offset + 1):
      got = prune.keep_offset_window(scores, offset, size, ascending=ascending)
      assert got.tolist() == brute_window(scores, offset, size, ascending)


def test_offset_default_is_descending_and_ascending_is_original_argsort():
  scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])  # distinct
  assert prune.keep_offset_window(scores, 1, 2).tolist() == [0, 4]  # skip 0.9; keep .7 .5
  assert prune.keep_offset_window(scores, 1, 2, ascending=True).tolist() == \
      sorted(np.argsort(scores)[1:3].tolist())
  assert prune.keep_offset_window(scores, 0, 3).tolist() == prune.keep_hardest(scores, 3).tolist()


def test_offset_window_errors():
  with pytest.raises(SelectionError, match="exceeds"):
    prune.keep_offset_window([1.0, 2.0, 3.0], 2, 2)
  with pytest.raises(SelectionError, match="offset must be an int >= 0"):
    prune.keep_offset_window([1.0, 2.0, 3.0], -1, 2)


# --------------------------------------------------------------------------------- random

def test_random_matches_original_rule_and_is_seeded():
  for run in range(3):
    seed = prune.original_random_seed(run)
    assert seed == 4426 + run * 424242
    ref = np.sort(np.random.RandomState(seed).choice(1000, 300, replace=False))
    got = prune.keep_random(1000, 300, seed)
    assert got.dtype == np.int32 and got.tolist() == ref.tolist()
    assert prune.keep_random(1000, 300, seed).tolist() == got.tolist()
  assert prune.keep_random(1000, 300, 4426).tolist() != prune.keep_random(1000, 300, 4427).tolist()
  with pytest.raises(SelectionError, match="needs a seed"):
    prune.keep_random(10, 3, None)
  with pytest.raises(SelectionError, match="seed must be an int"):
    prune.keep_random(10, 3, -1)


# ------------------------------------------------------------------------- class balanced

@pytest.mark.parametrize("counts,size,expected", [
    ([4, 4, 4], 6, [2, 2, 2]),
    ([4, 4, 4], 7, [3, 2, 2]),      # remainder to the lowest class id
    ([4, 4, 4], 8, [3, 3, 2]),
    ([1, 5, 5], 7, [1, 3, 3]),      # class 0 exhausted; its share redistributed
    ([1, 5, 5], 8, [1, 4, 3]),
    ([1, 2, 9], 10, [1, 2, 7]),
    ([3, 3, 3], 9, [3, 3, 3]),
    ([2, 6], 1, [1, 0]),
])
def test_class_balanced_quotas_exact(counts, size, expected):
  labels = np.repeat(np.arange(len(counts)), counts)
  np.random.RandomState(1).shuffle(labels)
  classes, quotas = prune.class_balanced_quotas(labels, size)
  assert classes.tolist() == list(range(len(counts)))
  assert quotas.tolist() == expected and quotas.sum() == size


@pytest.mark.parametrize("strategy", ["hardest", "easiest", "random"])
def test_class_balanced_selection_per_class(strategy):
  rng = np.random.RandomState(2)
  labels = rng.choice([0, 2, 5], size=40, p=[0.1, 0.4, 0.5])  # missing class ids 1, 3, 4
  scores = rng.randint(0, 4, size=40).astype(np.float32)  # many ties
  ids = prune.keep_class_balanced(scores, labels, 17, strategy, seed=7)
  assert ids.dtype == np.int32 and ids.tolist() == sorted(set(ids.tolist()))
  classes, quotas = prune.class_balanced_quotas(labels, 17)
  for c, q in zip(classes, quotas):
    members = np.flatnonzero(labels == c)
    chosen = [i for i in ids if labels[i] == c]
    assert len(chosen) == q
    if strategy != "random":
      sub = scores[members].tolist()
      best = brute_best_subset(sub, int(q), maximise=strategy == "hardest") if q else []
      assert chosen == [int(members[j]) for j in best]
  if strategy == "random":
    rng = np.random.RandomState(7)
    ref = np.concatenate([rng.choice(np.flatnonzero(labels == c), q, replace=False)
                          for c, q in zip(classes, quotas) if q])
    assert ids.tolist() == np.sort(ref).tolist()


def test_class_balanced_errors():
  with pytest.raises(SelectionError, match="unknown class-balanced strategy"):
    prune.keep_class_balanced([1.0, 2.0], [0, 1], 1, "max")
  with pytest.raises(SelectionError, match="needs a seed"):
    prune.keep_class_balanced(None, [0, 1], 1, "random")
  with pytest.raises(SelectionError, match="dataset has 2 examples"):
    prune.keep_class_balanced([1.0, 2.0, 3.0], [0, 1], 1)


# ------------------------------------------------------------------------------------ CCS

def test_ccs_budgets_hand_derived():
  # fewest first: s0 min(1, 8//4)=1; s1 min(2, 7//3)=2; s3 min(3, 5//2)=2; s2 3.
  assert prune.ccs_budgets([1, 2, 6, 3], 8).tolist() == [1, 2, 3, 2]
  assert prune.ccs_budgets([3, 3], 5).tolist() == [2, 3]  # equal counts: lower stratum first
  assert prune.ccs_budgets([0, 10, 0, 1], 5).tolist() == [0, 4, 0, 1]
  assert prune.ccs_budgets([5, 5, 5], 15).tolist() == [5, 5, 5]


def test_ccs_budget_always_exact():
  rng = np.random.RandomState(3)
  for _ in range(200):
    counts = rng.randint(0, 30, size=rng.randint(1, 12))
    if counts.sum() == 0:
      continue
    size = rng.randint(1, counts.sum() + 1)
    budgets = prune.ccs_budgets(counts, size)
    assert budgets.sum() == size and np.all(budgets <= counts) and np.all(budgets >= 0)


def test_ccs_hand_derived_allocation():
  # range [0, 4] in 4 strata: [0,1) [1,2) [2,3) [3,4]; counts 1, 2, 6, 3.
  scores = np.array([2.1, 0.0, 3.0, 1.0, 2.2, 4.0, 2.3, 1.5, 2.4, 3.5, 2.5, 2.6])
  strata = prune.ccs_strata(scores, 4)
  assert np.bincount(strata).tolist() == [1, 2, 6, 3]
  for seed in range(5):
    ids = prune.keep_ccs(scores, 8, num_strata=4, seed=seed)
    assert ids.dtype == np.int32 and len(set(ids.tolist())) == 8
    assert np.bincount(strata[ids], minlength=4).tolist() == [1, 2, 3, 2]
  again = prune.keep_ccs(scores, 8, 4, seed=1)
  assert again.tolist() == prune.keep_ccs(scores, 8, 4, seed=1).tolist()


def test_ccs_sampling_rule():
  scores = np.array([2.1, 0.0, 3.0, 1.0, 2.2, 4.0, 2.3, 1.5, 2.4, 3.5, 2.5, 2.6])
  strata = prune.ccs_strata(scores, 4)
  rng = np.random.RandomState(11)
  ref = [rng.choice(np.flatnonzero(strata == s), b, replace=False)
         for s, b in enumerate([1, 2, 3, 2])]
  assert prune.keep_ccs(scores, 8, 4, seed=11).tolist() == np.sort(np.concatenate(ref)).tolist()


def test_ccs_hard_prune_fraction():
  scores = np.arange(20, dtype=np.float32)[::-1].copy()  # id 0 hardest
  ids = prune.keep_ccs(scores, 18, num_strata=3, hard_prune_fraction=0.1, seed=0)
  assert ids.tolist() == list(range(2, 20))  # floor(20 * 0.1) = 2 hardest dropped
  for seed in range(5):
    ids = prune.keep_ccs(scores, 6, num_strata=3, hard_prune_fraction=0.25, seed=seed)
    assert ids.min() >= 5
    # strata over the remaining range [0, 14]: ids 5..19 -> scores 14..0, 5 per stratum.
    strata = np.searchsorted([14 / 3, 28 / 3], scores[ids], side="right")
    assert np.bincount(strata, minlength=3).tolist() == [2, 2, 2]
  with pytest.raises(SelectionError, match="left after hard_prune_fraction"):
    prune.keep_ccs(scores, 19, hard_prune_fraction=0.1, seed=0)
  with pytest.raises(SelectionError, match="hard_prune_fraction is 1.0"):
    prune.keep_ccs(scores, 1, hard_prune_fraction=1.0, seed=0)


def test_ccs_infinite_scores():
  scores = np.array([0.0, 1.0, INF, 2.0, INF, 3.0, INF, 4.0])
  strata = prune.ccs_strata(scores, 2)
  assert strata.tolist() == [0, 0, 2, 1, 2, 1, 2, 1]  # +inf in the extra stratum
  ids = prune.keep_ccs(scores, 5, num_strata=2, hard_prune_fraction=0.25, seed=0)
  assert not np.isin(ids, [2, 4]).any()  # the two lowest-id infs pruned first
  ids = prune.keep_ccs(scores, 3, num_strata=2, seed=0)
  assert np.bincount(strata[ids], minlength=3).tolist() == [1, 1, 1]
  assert prune.ccs_strata([2.0, 2.0], 5).tolist() == [0, 0]


# ------------------------------------------------------------------------------- registry

def test_select_registry_dispatch():
  scores = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])
  labels = np.array([0, 1, 0, 1, 0, 1])
  assert set(prune.SELECTORS) == {"keep_hardest", "keep_easiest", "keep_max_abs",
                                  "keep_min_abs", "offset", "random", "class_balanced", "ccs"}
  assert prune.select("keep_hardest", scores, keep=2).tolist() == [1, 4]
  assert prune.select("keep_easiest", scores, labels, 2).tolist() == [2, 5]
  assert prune.select("keep_max_abs", -scores, keep=2).tolist() == [1, 4]
  assert prune.select("keep_min_abs", -scores, keep=2).tolist() == [2, 5]
  assert prune.select("offset", scores, keep=2, offset=1).tolist() == [3, 4]
  assert prune.select("offset", scores, keep=2, offset=1, ascending=True).tolist() == [0, 5]
  assert prune.select("random", None, labels, 3, seed=5).tolist() == \
      prune.keep_random(6, 3, 5).tolist()
  assert prune.select("class_balanced", scores, labels, 2).tolist() == [1, 4]
  assert prune.select("ccs", scores, keep=3, seed=0, num_strata=2).tolist() == \
      prune.keep_ccs(scores, 3, 2, seed=0).tolist()


def test_select_registry_errors():
  with pytest.raises(SelectionError, match="unknown selection method 'el2n'.*keep_hardest"):
    prune.select("el2n", [1.0], keep=1)
  with pytest.raises(SelectionError, match="takes no option 'offset'"):
    prune.select("keep_hardest", [1.0, 2.0], keep=1, offset=1)
  with pytest.raises(SelectionError, match="needs option 'offset'"):
    prune.select("offset", [1.0, 2.0], keep=1)
  with pytest.raises(SelectionError, match="needs a seed"):
    prune.select("random", [1.0, 2.0], keep=1)
  with pytest.raises(SelectionError, match="needs labels"):
    prune.select("class_balanced", [1.0, 2.0], keep=1)
  with pytest.raises(SelectionError, match="labels and scores come from different"):
    prune.validate_labels([0, 1, 1], 2)
  with pytest.raises(SelectionError, match="dataset has 3 examples"):
    prune.select("keep_hardest", [1.0, 2.0], [0, 1, 1], keep=1)


# ----------------------------------------------------------------------------- validation

def test_validate_scores_errors():
  with pytest.raises(SelectionError, match="has 3 entries but the dataset has 4.*another dataset"):
    prune.validate_scores([1.0, 2.0, 3.0], 4)
  with pytest.raises(SelectionError, match="2 NaN values \\(first at index 1\\)"):
    prune.validate_scores([1.0, math.nan, 3.0, math.nan], 4)
  with pytest.raises(SelectionError, match="-inf"):
    prune.validate_scores([1.0, -INF], 2, allow_inf=True)
  with pytest.raises(SelectionError, match="\\+inf.*allow_inf=True"):
    prune.validate_scores([1.0, INF], 2)
  with pytest.raises(SelectionError, match="1-D"):
    prune.validate_scores(np.zeros((2, 3)), 2)
  with pytest.raises(SelectionError, match="real numbers"):
    prune.validate_scores(np.array(["a", "b"]), 2)
  assert prune.validate_scores([1.0, INF], 2, allow_inf=True).tolist() == [1.0, INF]
  assert prune.validate_scores(np.ones(3, np.float32), 3).dtype == np.float32
  with pytest.raises(SelectionError, match="NaN"):
    prune.keep_hardest([1.0, math.nan], 1)


def test_resolve_size():
  assert prune.resolve_size(50_000, prune_fraction=0.3) == 35_000
  assert prune.resolve_size(50_000, prune_fraction=0.0) == 50_000
  assert prune.resolve_size(10, prune_fraction=0.55) == 5  # floor(5.5) = 5 pruned
  assert prune.resolve_size(10, keep_count=4) == 4
  assert prune.resolve_size(10, keep_count=np.int64(10)) == 10
  cases = [
      (dict(prune_fraction=1.0), "prune_fraction is 1.0 but must be in \\[0, 1\\)"),
      (dict(prune_fraction=-0.1), "prune_fraction is -0.1"),
      (dict(prune_fraction=1), "must be a float"),
      (dict(prune_fraction=0.99999999), "keeps none"),  # 10 * f rounds to 10
      (dict(keep_count=0), "keep_count is 0: keep at least 1"),
      (dict(keep_count=11), "only 10 examples"),
      (dict(keep_count=0.5), "must be an int count.*prune_fraction"),
      (dict(keep_count=True), "must be an int count"),
      (dict(), "exactly one of"),
      (dict(keep_count=3, prune_fraction=0.5), "exactly one of"),
  ]
  for kwargs, message in cases:
    with pytest.raises(SelectionError, match=message):
      prune.resolve_size(10, **kwargs)


def test_selectors_reject_bad_sizes():
  with pytest.raises(SelectionError, match="size is 0: keep at least 1"):
    prune.keep_hardest([1.0, 2.0], 0)
  with pytest.raises(SelectionError, match="only 2 examples"):
    prune.keep_easiest([1.0, 2.0], 3)
  with pytest.raises(SelectionError, match="must be an int count"):
    prune.keep_hardest([1.0, 2.0], 1.0)
  assert issubclass(SelectionError, ValueError)


# ---------------------------------------------------------------------------- label noise

def test_corrupt_labels_matches_original_and_records_changes():
  labels = np.random.RandomState(0).randint(0, 3, size=200).astype(np.int32)
  before = labels.copy()
  noisy, record = prune.corrupt_labels_with_record(labels, 0.25, seed=9, num_classes=3)
  assert np.array_equal(labels, before)  # input untouched
  ids = np.random.RandomState(9).choice(200, 50, replace=False)
  ref = labels.copy()
  ref[np.sort(ids)] = ref[ids]
  assert np.array_equal(noisy, ref)
  assert record.chosen_ids.tolist() == np.sort(ids).tolist()
  changed = np.flatnonzero(noisy != labels)
  assert record.changed_ids.tolist() == changed.tolist()
  assert 0 < changed.size < 50  # with 3 classes some permuted labels stay the same
  assert set(changed.tolist()) <= set(ids.tolist())
  assert np.array_equal(record.old_labels, labels[changed])
  assert np.array_equal(record.new_labels, noisy[changed])
  assert np.all(record.old_labels != record.new_labels)
  assert np.array_equal(np.bincount(noisy, minlength=3), np.bincount(labels, minlength=3))
  assert np.array_equal(record.apply(labels), noisy)
  noisy2, changed2 = prune.corrupt_labels(labels, 0.25, 9, 3)
  assert np.array_equal(noisy2, noisy) and np.array_equal(changed2, changed)
  _, changed3 = prune.corrupt_labels(labels, 0.25, 10, 3)
  assert not np.array_equal(changed3, changed)


def test_corrupt_labels_fraction_zero_and_errors():
  labels = np.arange(10) % 4
  noisy, record = prune.corrupt_labels_with_record(labels, 0.0, seed=1, num_classes=4)
  assert np.array_equal(noisy, labels) and record.chosen_ids.size == 0
  assert record.changed_ids.size == 0
  with pytest.raises(SelectionError, match="num_classes is 3"):
    prune.corrupt_labels(labels, 0.5, 1, 3)
  with pytest.raises(SelectionError, match="fraction is 1.5"):
    prune.corrupt_labels(labels, 1.5, 1, 4)
  with pytest.raises(SelectionError, match="one-hot"):
    prune.corrupt_labels(np.eye(4)[labels].astype(int), 0.5, 1, 4)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_label_noise_record_roundtrip(tmp_path, suffix):
  labels = np.random.RandomState(1).randint(0, 10, size=100)
  noisy, record = prune.corrupt_labels_with_record(labels, 0.3, seed=4, num_classes=10)
  path = str(tmp_path / f"noise{suffix}")
  prune.save_label_noise_record(path, record)
  loaded = prune.load_label_noise_record(path)
  scalars = (loaded.seed, loaded.fraction, loaded.num_classes, loaded.num_examples)
  assert scalars == (4, 0.3, 10, 100)
  for field in ("chosen_ids", "changed_ids", "old_labels", "new_labels"):
    assert np.array_equal(getattr(loaded, field), getattr(record, field))
  assert np.array_equal(loaded.apply(labels), noisy)
  assert [p.name for p in tmp_path.iterdir()] == [f"noise{suffix}"]  # no temp files left
  with pytest.raises(SelectionError, match="must end in .npz or .json"):
    prune.save_label_noise_record(str(tmp_path / "noise.txt"), record)
  with pytest.raises(SelectionError, match="another dataset"):
    loaded.apply((labels + 1) % 10)


def test_noisy_detection_precision_and_recall():
  scores = np.array([5.0, 1.0, 4.0, 3.0, 0.0, 2.0])
  changed = np.array([0, 3, 4])
  assert prune.noisy_detection_precision(scores, changed, 2) == 0.5   # top-2 = {0, 2}
  assert prune.noisy_detection_recall(scores, changed, 2) == pytest.approx(1 / 3)
  assert prune.noisy_detection_precision(scores, changed, 3) == pytest.approx(2 / 3)
  assert prune.noisy_detection_recall(scores, changed, 6) == 1.0
  tied = np.array([1.0, 1.0, 1.0])
  assert prune.noisy_detection_precision(tied, [1], 1) == 0.0  # tie -> id 0 ranked first
  assert prune.noisy_detection_precision([INF, 0.0], [0], 1) == 1.0
  with pytest.raises(SelectionError, match="no changed ids"):
    prune.noisy_detection_recall(scores, [], 2)
  with pytest.raises(SelectionError, match="must lie in"):
    prune.noisy_detection_precision(scores, [6], 2)


# ----------------------------------------------------------------------------------- pool

def test_pool_selection():
  pool = np.array([0.2, 0.9, 0.9, 0.1, 0.5])
  assert prune.select_from_pool(pool, 2).tolist() == [1, 2]
  assert prune.select_from_pool(pool, 3).tolist() == [1, 2, 4]
  assert prune.select_from_pool(np.array([1.0, 2.0, 2.0]), 1).tolist() == [1]  # stable tie
  assert prune.select_from_pool(pool, 2, method="bottom").tolist() == [0, 3]
  assert prune.random_from_pool(5, 2, 3).tolist() == \
      np.sort(np.random.RandomState(3).choice(5, 2, replace=False)).tolist()
  with pytest.raises(SelectionError, match="unknown pool method"):
    prune.select_from_pool(pool, 2, method="max")


def test_entropy_from_probs():
  probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]], np.float32)
  ent = prune.entropy_from_probs(probs)
  assert ent.dtype == np.float32
  expected = [0.0, math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
  np.testing.assert_allclose(ent, expected, rtol=1e-6)
  top = prune.select_from_pool(ent, 1)
  assert top.tolist() == [1]
