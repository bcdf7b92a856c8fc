"""Sweep statistics (t-intervals, paired t-tests) against hand-derived values and scipy, and
how diverged/failed runs are shown: counted per cell, never averaged in."""

import csv
import json
import math
import os
import types

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from datadiet_jax import sweep_stats as S
from datadiet_jax.train.outcome import Chance
from datadiet_jax.pipelines import figure1

R = S.RunOutcome


def test_t_interval_is_the_hand_derived_student_interval():
  # n = 3 (df = 2): t_{0.975, 2} = (2p - 1) / sqrt(2 p (1 - p)) at p = 0.975, in closed form.
  t975 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
  assert t975 == pytest.approx(4.303, abs=5e-4)  # the textbook table value
  low, high = S.t_interval([0.5, 0.6, 0.7])  # mean 0.6, sample std 0.1
  half = t975 * 0.1 / math.sqrt(3)
  assert (low, high) == (pytest.approx(0.6 - half, rel=1e-12), pytest.approx(0.6 + half, rel=1e-12))
  # scipy's own interval agrees for another n.
  x = np.array([0.41, 0.45, 0.40, 0.47, 0.44])
  expected = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
  np.testing.assert_allclose(S.t_interval(x), expected, rtol=1e-12)
  assert all(math.isnan(v) for v in S.t_interval([0.5]))


def test_paired_comparison_matches_a_hand_computed_paired_t_test():
  random = [R("random", 0.5, s, "ok", a) for s, a in enumerate([0.50, 0.52, 0.47])]
  el2n = [R("el2n", 0.5, s, "ok", a) for s, a in enumerate([0.53, 0.56, 0.48])]
  (pair,) = S.paired_comparisons(random + el2n, baseline="random")
  d = np.array([0.03, 0.04, 0.01])
  mean, sd = d.mean(), d.std(ddof=1)
  t = mean / (sd / math.sqrt(3))
  # Two-sided p of Student t with df = 2 in closed form: 1 - |t| / sqrt(2 + t^2).
  assert pair.p_value == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-9)
  assert pair.p_value == pytest.approx(stats.ttest_rel([0.53, 0.56, 0.48],
                                                       [0.50, 0.52, 0.47]).pvalue, rel=1e-12)
  half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * sd / math.sqrt(3)
  assert pair.num_pairs == 3 and pair.mean_difference == pytest.approx(mean, rel=1e-12)
  assert (pair.ci_low, pair.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
  assert (pair.method, pair.baseline, pair.fraction, pair.seeds_unpaired) == (
      "el2n", "random", 0.5, ())


def test_pairs_drop_seeds_whose_runs_are_not_ok_on_either_side():
  runs = [R("random", 0.3, 0, "ok", 0.5), R("random", 0.3, 1, "diverged", float("nan")),
          R("random", 0.3, 2, "ok", 0.6), R("random", 0.3, 3, "ok", 0.55),
          R("m", 0.3, 0, "ok", 0.52), R("m", 0.3, 1, "ok", 0.9), R("m", 0.3, 2, "failed", 0.1),
          R("m", 0.3, 3, "ok", 0.58)]
  (pair,) = S.paired_comparisons(runs)
  assert pair.num_pairs == 2 and pair.seeds_unpaired == (1, 2)
  assert pair.mean_difference == pytest.approx((0.02 + 0.03) / 2)
  assert pair.p_value == pytest.approx(stats.ttest_rel([0.52, 0.58], [0.5, 0.55]).pvalue)


def test_cells_count_outcomes_and_average_only_ok_runs():
  runs = [R("random", 0.5, 0, "ok", 0.50), R("random", 0.5, 1, "ok", 0.54),
          R("random", 0.5, 2, "diverged", float("nan")),
          R("easy", 0.5, 0, "failed", 0.10), R("easy", 0.5, 1, "diverged", float("nan")),
          R("hard", 0.5, 0, "ok", 0.44)]
  cells = {c.method: c for c in S.cell_stats(runs)}
  rnd = cells["random"]
  assert (rnd.num_ok, rnd.num_diverged, rnd.num_failed, rnd.num_runs) == (2, 1, 0, 3)
  assert rnd.mean == pytest.approx(0.52) and rnd.std == pytest.approx(np.std([0.5, 0.54], ddof=1))
  assert rnd.outcomes_text() == "2 ok, 1 diverged"
  assert math.isnan(cells["easy"].mean) and cells["easy"].outcomes_text() == "0 ok, 1 diverged, 1 failed"
  table = S.markdown_accuracy_table(S.cell_stats(runs))
  lines = table.splitlines()
  assert lines[0] == "| method | 50% pruned |"
  assert lines[2].startswith("| random | 52.00 ± 2.83 [") and lines[2].endswith(
      "] (2 ok, 1 diverged) |")
  assert lines[3] == "| easy | — (0 ok, 1 diverged, 1 failed) |"
  assert lines[4] == "| hard | 44.00 (n=1) |"  # one run: no std, no interval
  assert "10.00" not in table  # the failed run's accuracy is never shown as a result
  assert S.outcome_summary_line(runs) == (
      "6 runs finished: 3 ok, 2 diverged, 1 failed (diverged/failed runs are counted, "
      "not averaged in).")


def _synthetic_workdir(root, num_classes=10):
  """Run directories as figure1 writes them, with hand-made summaries: random ok x3;
  EL2N-easiest ok, diverged (recorded so, accuracy and loss null, as train_run writes it),
  failed (an old summary without the field, loss >= ln 10); full data ok x2 and one run
  whose summary records outcome 'diverged'."""
  specs = [("full", "full data", 0.0, [(0.60, 1.1, None), (0.62, 1.0, None),
                                         (0.1, 2.0, "diverged")]),
           ("random", "random", 0.5, [(0.55, 1.3, None), (0.57, 1.2, None), (0.53, 1.35, None)]),
           ("el2n-easiest", "EL2N@312, keep easiest", 0.5,
            [(0.40, 1.8, None), (None, None, "diverged"), (0.10, 2.31, None)])]
  rows = []
  for key, method, fraction, runs in specs:
    for seed, (acc, loss, outcome) in enumerate(runs):
      folder = (os.path.join(root, "full", f"seed_{seed}") if key == "full" else
                os.path.join(root, "subsets", key, "prune_50", f"seed_{seed}"))
      os.makedirs(folder)
      summary = {"final_step": 10, "test_accuracy": acc, "test_loss": loss}
      if outcome:
        summary["outcome"] = outcome
      with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)
      rows.append({"method": method, "key": key, "prune_fraction": fraction, "seed": seed,
                   "num_kept": 0, "num_steps": 10, "test_accuracy": acc, "test_loss": loss,
                   "outcome": figure1._summary_fields(types.SimpleNamespace(
                       run_dir=folder, test_loss=loss), Chance(num_classes))["outcome"]})
  return rows


def test_figure1_report_shows_diverged_and_failed_cells_from_run_directories(tmp_path):
  rows = _synthetic_workdir(str(tmp_path))
  assert [r["outcome"] for r in rows] == ["ok", "ok", "diverged", "ok", "ok", "ok", "ok",
                                          "diverged", "failed"]
  config = figure1.Figure1Config(methods=(figure1.parse_method("random"),),
                                 prune_fractions=(0.5,), score_names=("input_norm",),
                                 num_score_runs=1, score_step=312, score_train_steps=312,
                                 grand_init_runs=1, num_seeds=3)
  dataset = types.SimpleNamespace(name="synthetic", num_train=100)
  scores = {"input_norm": np.arange(100.0)}
  paths = figure1.write_results(str(tmp_path), rows, scores, config, dataset)
  markdown = open(paths["markdown"]).read()
  assert "9 runs finished: 6 ok, 2 diverged, 1 failed" in markdown
  assert "| full data | 61.00 ± 1.41 [" in markdown and "(2 ok, 1 diverged) |" in markdown
  assert "| EL2N@312, keep easiest |  | 40.00 (1 ok, 1 diverged, 1 failed) |" in markdown
  random = np.array([0.55, 0.57, 0.53])
  low, high = stats.t.interval(0.95, 2, loc=random.mean(), scale=stats.sem(random))
  assert f"| random |  | 55.00 ± 2.00 [{100 * low:.2f}, {100 * high:.2f}] (n=3) |" in markdown
  # Paired against random: only seed 0 of EL2N-easiest is ok -> one pair, no p-value.
  assert "| EL2N@312, keep easiest | 50% | 1 (seeds 1, 2 unpaired) | -15.00 | — | — |" in markdown
  table = {r["key"]: r for r in _read_csv(paths["csv"])}
  assert (table["el2n-easiest"]["num_ok"], table["el2n-easiest"]["num_diverged"],
          table["el2n-easiest"]["num_failed"]) == ("1", "1", "1")
  assert float(table["el2n-easiest"]["test_accuracy_mean"]) == pytest.approx(0.40)
  with Image.open(paths["plot"]) as image:
    assert image.format == "PNG" and min(image.size) > 100


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_paired_p_value_is_undefined_when_every_pair_differs_by_the_same_amount():
  # Accuracies on 893 test examples: both seeds of the method are 9 examples below random,
  # so the differences have no spread and the t statistic is 0/0-like; scipy returns a p of
  # ~1e-15 from float rounding, which must not be reported as significance.
  runs = [S.RunOutcome("random", 0.5, s, "ok", a) for s, a in enumerate((860 / 893, 850 / 893))]
  runs += [S.RunOutcome("el2n", 0.5, s, "ok", a) for s, a in enumerate((851 / 893, 841 / 893))]
  (pair,) = S.paired_comparisons(runs)
  assert pair.num_pairs == 2 and pair.mean_difference == pytest.approx(-9 / 893)
  assert math.isnan(pair.p_value)
  assert "— (equal differences)" in S.markdown_paired_table([pair])


def test_paired_table_fraction_column_is_named_or_left_out():
  runs = [S.RunOutcome("random", 0.3, s, "ok", a) for s, a in enumerate((0.80, 0.82, 0.81))]
  runs += [S.RunOutcome("el2n", 0.3, s, "ok", a) for s, a in enumerate((0.70, 0.71, 0.73))]
  (pair,) = S.paired_comparisons(runs)
  rows = {h: [line.strip("|").split("|") for line in
              S.markdown_paired_table([pair], fraction_header=h).splitlines()]
          for h in ("% pruned", "keep", None)}
  assert [c.strip() for c in rows["% pruned"][0][:2]] == ["method", "% pruned"]
  assert [c.strip() for c in rows["keep"][2][:4]] == ["el2n", "30%", "3", "-9.67"]
  # Without the column: every line is one cell shorter and the rest is unchanged.
  for with_col, without in zip(rows["keep"], rows[None]):
    assert without == with_col[:1] + with_col[2:]
