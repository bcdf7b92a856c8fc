"""The NLP data-diet entry points on a slice of real SNIPS (seconds): `--mode=score_timing`
(Spearman and kept class balance recomputed from the saved files), figure 1 with label
noise on intent labels (precision@k recomputed from label_noise.npz and the score file),
and the dynamic sweep's slot-F1 column (mean ± std recomputed by hand)."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from datadiet_jax.pipelines.dynamic_sweep import markdown_table, summarize, DynamicSweepConfig
from datadiet_jax.pipelines.score_timing import point_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NLP_TAR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "nlp-text.tar.gz"))
TINY = ["--text_subset=snips", f"--data_dir={NLP_TAR}", "--train_per_class=6",
        "--max_length=24", "--bert_layers=1", "--bert_hidden=16", "--bert_heads=2",
        "--bert_intermediate=32", "--batch_size=8", "--eval_batch_size=350", "--noprogress",
        "--eval_every_steps=-1", "--save_steps=-1", "--score_runs=1"]
needs_data = pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="nlp-text.tar.gz absent")


def _run(args, env):
  return subprocess.run([sys.executable, "-m", "experiments.text", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_point_steps_round_to_the_first_points_grid():
  assert point_steps([0.05, 0.25, 0.5, 1, 2], 409) == (20, [20, 100, 200, 400, 820])
  assert point_steps([0.2, 1, 2], 5) == (1, [1, 5, 10])
  # 0 is step 0 (the checkpoint before training); the grid comes from the positive points
  assert point_steps([0, 0.2, 1], 5) == (1, [0, 1, 5])
  assert point_steps([0, 1, 2], 409) == (409, [0, 409, 818])
  for bad in ([-0.1, 1], [0], []):
    with pytest.raises(ValueError, match="fractions of an epoch >= 0"):
      point_steps(bad, 5)


@needs_data
def test_score_timing_on_snips_spearman_balance_and_pairs_match_the_saved_files(tmp_path,
                                                                                 cli_env):
  import json
  from scipy import stats
  from datadiet_jax.data.sources import load_text_dataset
  workdir = tmp_path / "timing"
  result = _run(["--mode=score_timing", f"--workdir={workdir}", *TINY, "--num_steps=10", "--lr=1e-2",
                 "--score_timing_points=0,1,2", "--score_timing_scores=el2n,grand_head",
                 "--scores=el2n,grand_head", "--num_seeds=2"], cli_env)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _rows(workdir / "results" / "score_timing.csv")
  # 42 examples / 8 = 5 steps per epoch; point 0 is the step-0 checkpoint
  assert [(r["score"], int(r["step"])) for r in rows] == [
      (s, k) for s in ("el2n", "grand_head") for k in (0, 5, 10)]
  assert (workdir / "results" / "score_timing.png").stat().st_size > 1000
  labels = load_text_dataset("joint_nlu", NLP_TAR, 24, "snips", train_per_class=6).train_labels

  def accuracy(sub, seed):
    summary = json.loads((workdir / "timing" / sub / f"seed_{seed}" / "summary.json").read_text())
    return summary["test_accuracy"]

  random = [accuracy("random", m) for m in (0, 1)]
  for r in rows:
    name, step = r["score"], int(r["step"])
    final = np.load(workdir / "scores" / name / "step_10.npy")
    score = np.load(workdir / "scores" / name / f"step_{step}.npy")
    assert float(r["spearman_vs_final"]) == pytest.approx(spearmanr(score, final)[0], abs=1e-9)
    sub = f"{name}-hardest/step_{step}"
    for m in (0, 1):
      kept = np.load(workdir / "timing" / sub / f"seed_{m}" / "kept_ids.npy")
      assert len(kept) == 21 and set(kept) == set(np.argsort(-score, kind="stable")[:21])
    counts = np.bincount(labels[kept])
    assert float(r["max_class_share"]) == pytest.approx(counts.max() / 21)
    # retrain mean and the paired difference to random by seed, recomputed from summaries
    accs = [accuracy(sub, m) for m in (0, 1)]
    assert r["num_ok"] == "2" and float(r["retrain_accuracy_mean"]) == pytest.approx(
        np.mean(accs))
    diffs = np.subtract(accs, random)
    assert float(r["paired_difference_mean"]) == pytest.approx(diffs.mean())
    if diffs.std() > 0:
      half = stats.t.ppf(0.975, 1) * diffs.std(ddof=1) / np.sqrt(2)
      assert float(r["paired_ci95_high"]) == pytest.approx(diffs.mean() + half)
  assert [float(r["spearman_vs_final"]) for r in rows if r["step"] == "10"] == pytest.approx(
      [1.0, 1.0])
  table = (workdir / "results" / "score_timing.md").read_text()
  assert "| grand_head | 0 | 0 |" in table and "vs random (points)" in table


@needs_data
def test_text_label_noise_precision_matches_the_record_and_scores(tmp_path, cli_env):
  workdir = tmp_path / "noise"
  result = _run(["--mode=figure1", f"--workdir={workdir}", *TINY, "--num_steps=6",
                 "--score_step=6", "--figure1_scores=el2n,grand_head",
                 "--methods=random,el2n:offset", "--prune_fractions=0.5",
                 "--label_noise_fraction=0.25", "--offset_fraction=0.05", "--noinclude_full"],
                cli_env)
  assert result.returncode == 0, result.stderr[-3000:]
  record = np.load(workdir / "label_noise.npz")
  changed = record["changed_ids"]
  assert len(changed) > 0 and (record["old_labels"] != record["new_labels"]).all()
  for row in _rows(workdir / "results" / "noisy_detection.csv"):
    name = "el2n" if row["score"].startswith("EL2N") else "grand_head"
    score = np.load(workdir / "scores" / name / "step_6.npy")
    k = len(changed)
    top = np.argsort(-score, kind="stable")[:k]
    assert int(row["k"]) == k
    assert float(row["precision_at_k"]) == pytest.approx(np.isin(top, changed).mean())


def test_dynamic_sweep_table_reports_slot_f1_mean_and_std():
  def row(method, seed, acc, f1, outcome="ok"):
    return {"method": method, "label": method, "setting": "all data" if method == "full"
            else "keep 50%", "param": "", "seed": seed, "outcome": outcome,
            "test_accuracy": acc, "test_loss": 0.1, "optimizer_steps": 10,
            "train_examples": 100 if method == "full" else 50, "scored_examples": 30,
            "train_seconds": 2.0, "score_seconds": 0.0, "test_slot_f1": f1}
  rows = [row("full", 0, 0.9, 0.70), row("full", 1, 0.8, 0.80),
          row("dynamic_el2n", 0, 0.7, 0.50), row("dynamic_el2n", 1, 0.6, 0.60),
          row("dynamic_el2n", 2, 0.1, 0.01, outcome="failed")]
  table = {r["method"]: r for r in summarize(rows)}
  assert table["full"]["test_slot_f1_mean"] == pytest.approx(0.75)
  assert table["full"]["test_slot_f1_std"] == pytest.approx(np.sqrt(0.005))  # ddof 1
  assert table["dynamic_el2n"]["test_slot_f1_mean"] == pytest.approx(0.55)  # failed not in
  text = markdown_table(list(table.values()), type("D", (), {"name": "x", "num_train": 100}),
                        DynamicSweepConfig(num_epochs=2, methods=("full", "dynamic_el2n"),
                                           keep_fractions=(0.5,), infobatch_ratios=()))
  assert "| slot f1 |" in text and "0.550 ± 0.071" in text


def test_offset_percent_methods_skip_their_own_top_share():
  from datadiet_jax.pipelines.figure1 import kept_ids, parse_method
  scores = {"el2n": np.arange(100, dtype=np.float64)[::-1].copy()}  # example i has score 99-i
  labels = np.zeros(100, np.int32)
  for spec, skipped in (("el2n:offset1", 1), ("el2n:offset5", 5), ("el2n:offset10", 10)):
    method = parse_method(spec)
    assert method.key == f"el2n-offset{skipped}"
    ids = kept_ids(method, scores, labels, keep=30, seed=0, offset=0)
    assert sorted(ids) == list(range(skipped, skipped + 30))  # the 30 after the top P %
  # ATIS (N = 4478), 10 % pruned: keep 4478 - floor(447.8) = 4031; the top 10 % would be
  # round(447.8) = 448 and the window 1 past the end: it skips the top 447 instead.
  n = 4478
  scores_atis = {"el2n": np.arange(n, dtype=np.float64)[::-1].copy()}
  ids = kept_ids(parse_method("el2n:offset10"), scores_atis, np.zeros(n, np.int32),
                 keep=4031, seed=0, offset=0)
  assert sorted(ids) == list(range(447, n))
  assert parse_method("el2n:offset").key == "el2n-offset"  # --offset_fraction, as before
  with pytest.raises(ValueError, match="offset<P>"):
    parse_method("el2n:offsetx")
