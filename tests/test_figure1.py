"""The Figure-1 pipeline on digits with a tiny budget: scores -> subsets -> equal-step
training -> table and plots; resuming; bad inputs."""

import csv
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.loop import TrainConfig, run_paths
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.pipelines.figure1 import Figure1Config, parse_method, run_figure1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, SCORE_STEP, BATCH = 20, 10, 32
PRUNE = 0.5


def _seeds(run):  # the CLI's scheme (experiments.common.run_seeds with default flags)
  return 42 + run * 424242, 4242 + run * 424242


def _config(**changes):
  base = dict(methods=(parse_method("random"), parse_method("el2n:hardest")),
              prune_fractions=(PRUNE,),
              score_names=("el2n", "grand", "grand_init", "forgetting", "input_norm"),
              num_score_runs=1, score_step=SCORE_STEP, score_train_steps=SCORE_STEP,
              grand_init_runs=2, num_seeds=1, include_full=True, budget="steps")
  base.update(changes)
  return Figure1Config(**base)


@pytest.fixture(scope="module")
def setup():
  dataset = load_dataset("digits", sort_by_class=True)
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  optimizer = OptimizerConfig()  # the CLI defaults
  train = TrainConfig(num_steps=NUM_STEPS, batch_size=BATCH, eval_every_steps=-1, save_steps=-1,
                      augment=False)
  return dataset, model, optimizer, train


@pytest.fixture(scope="module")
def first(tmp_path_factory, setup):
  workdir = str(tmp_path_factory.mktemp("figure1") / "work")
  out = run_figure1(workdir, *setup, _config(), _seeds, progress=False)
  return workdir, out


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _top_k_by_threshold(scores, k):
  """The k highest scores, ties at the cut broken towards lower ids, without argsort."""
  threshold = np.sort(scores)[::-1][k - 1]
  above = np.flatnonzero(scores > threshold)
  ties = np.flatnonzero(scores == threshold)[:k - len(above)]
  return np.sort(np.concatenate([above, ties]))


def test_pipeline_writes_table_plots_and_the_selected_subsets(first, setup):
  workdir, out = first
  dataset = setup[0]
  n = dataset.num_train
  keep = n - int(np.floor(n * PRUNE))
  assert (n, keep) == (1442, 721)
  paths = out["paths"]
  for key in ("csv", "markdown", "plot", "correlations_plot"):
    assert os.path.isfile(paths[key]), key
    assert os.path.dirname(paths[key]) == os.path.join(workdir, "results")
  assert {os.path.basename(paths[k]) for k in ("csv", "markdown", "plot", "correlations_plot")} \
      == {"results.csv", "results.md", "accuracy_vs_pruned.png", "score_correlations.png"}
  for key in ("plot", "correlations_plot"):
    with Image.open(paths[key]) as image:
      assert image.format == "PNG" and min(image.size) > 100
  # 1 full + 2 methods x 1 fraction x 1 seed trainings, plus the score run.
  assert out["trainings_run"] == 3
  rows = out["rows"]
  assert [r["key"] for r in rows] == ["full", "random", "el2n-hardest"]
  # The equal-step rule: every subset trains the full run's number of steps.
  assert all(r["num_steps"] == NUM_STEPS for r in rows)
  assert [r["num_kept"] for r in rows] == [n, keep, keep]

  # el2n-hardest kept the top-k of the saved (averaged) EL2N scores at the score step.
  scores = np.load(os.path.join(workdir, "scores", "el2n", f"step_{SCORE_STEP}.npy"))
  assert scores.shape == (n,)
  subset = os.path.join(workdir, "subsets", "el2n-hardest", "prune_50", "seed_0")
  kept = np.load(os.path.join(subset, "kept_ids.npy"))
  assert len(kept) == keep and len(np.unique(kept)) == keep
  np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(-scores, kind="stable")[:keep]))
  np.testing.assert_array_equal(np.sort(kept), _top_k_by_threshold(scores, keep))
  assert scores[kept].min() >= np.delete(scores, kept).max()
  random_kept = np.load(os.path.join(workdir, "subsets", "random", "prune_50", "seed_0",
                                     "kept_ids.npy"))
  assert len(np.unique(random_kept)) == keep and random_kept.min() >= 0 and random_kept.max() < n
  assert len(np.intersect1d(random_kept, kept)) < keep  # a different subset

  # Each row is its run's summary; the subset runs trained on exactly the kept examples.
  run_dirs = [os.path.join(workdir, "full", "seed_0"),
              os.path.join(workdir, "subsets", "random", "prune_50", "seed_0"), subset]
  for row, run_dir in zip(rows, run_dirs):
    summary = json.load(open(run_paths(run_dir)["summary"]))
    assert summary["final_step"] == NUM_STEPS
    assert summary["num_train_examples"] == row["num_kept"]
    assert summary["test_accuracy"] == row["test_accuracy"]
    # forget_scores over the whole dataset: never-trained (pruned) examples are inf.
    forget = np.load(run_paths(run_dir)["forget_scores"])
    if row["key"] == "el2n-hardest":
      assert np.all(np.isinf(np.delete(forget, kept)))
  # The table (one seed: mean = the run's accuracy; std and t-interval undefined, nan, not 0)
  # and its markdown rendering. With 20 steps a run can end at or below chance (test loss
  # >= ln 10 and test accuracy within 3 binomial standard errors of the majority test
  # label's share): it is then counted as failed, and its accuracy is not shown as a result.
  share = np.bincount(dataset.test_labels).max() / len(dataset.test_labels)
  bound = share + 3 * np.sqrt(share * (1 - share) / len(dataset.test_labels))
  expected = ["ok" if r["test_loss"] < np.log(dataset.num_classes) or r["test_accuracy"] > bound
              else "failed" for r in rows]
  assert [r["outcome"] for r in rows] == expected
  table = _read_csv(paths["csv"])
  markdown = open(paths["markdown"]).read()
  assert [t["key"] for t in table] == ["full", "random", "el2n-hardest"]
  for t, r in zip(table, rows):
    ok = r["outcome"] == "ok"
    assert int(t["num_seeds"]) == 1 and int(t["num_ok"]) == int(ok)
    assert int(t["num_failed"]) == int(not ok) and int(t["num_diverged"]) == 0
    assert np.isnan(float(t["test_accuracy_std"])) and np.isnan(float(t["ci95_low"]))
    if ok:
      assert float(t["test_accuracy_mean"]) == pytest.approx(r["test_accuracy"], abs=1e-12)
      assert f"| {100 * r['test_accuracy']:.2f} (n=1) |" in markdown
    else:
      assert np.isnan(float(t["test_accuracy_mean"]))
      assert "| — (0 ok, 1 failed) |" in markdown
      assert f"{100 * r['test_accuracy']:.2f}" not in markdown
  failed = expected.count("failed")
  assert (f"3 runs finished: {3 - failed} ok, 0 diverged, {failed} failed" in markdown)
  # One seed: the paired comparison has at most one pair, no interval and no p-value.
  paired = _read_csv(os.path.join(workdir, "results", "paired_vs_random.csv"))
  assert [p["method"] for p in paired] == ["EL2N@10, keep hardest"]
  both_ok = expected[1] == expected[2] == "ok"
  assert int(paired[0]["num_pairs"]) == int(both_ok)
  if both_ok:
    assert float(paired[0]["mean_difference"]) == pytest.approx(
        rows[2]["test_accuracy"] - rows[1]["test_accuracy"], abs=1e-12)
  assert np.isnan(float(paired[0]["p_value"]))
  assert "50% pruned" in markdown
  # Scores: every requested score was computed with the documented step.
  for name, step in (("el2n", SCORE_STEP), ("grand", SCORE_STEP), ("grand_init", 0),
                     ("forgetting", SCORE_STEP), ("input_norm", 0)):
    path = os.path.join(workdir, "scores", name, f"step_{step}.npy")
    assert np.load(path).shape == (n,), path
  # GraNd at init has its own file name (not grand@0, which is GraNd of trained runs).
  assert not os.path.exists(os.path.join(workdir, "scores", "grand", "step_0.npy"))
  grand_init = json.load(open(os.path.join(workdir, "scores", "grand_init", "step_0.json")))
  assert grand_init["num_runs"] == 2 and grand_init["seeds"] == [[42, None], [424284, None]]
  correlations = _read_csv(os.path.join(workdir, "results", "score_correlations.csv"))
  assert len(correlations) == 5
  for i, row in enumerate(correlations):  # a correlation matrix: unit diagonal
    assert float(list(row.values())[1 + i]) == pytest.approx(1.0)


def test_rerun_trains_nothing_and_returns_the_same_table(first, setup):
  workdir, out = first
  table = open(out["paths"]["csv"]).read()
  again = run_figure1(workdir, *setup, _config(), _seeds, progress=False)
  assert again["trainings_run"] == 0
  assert again["rows"] == out["rows"]
  assert open(again["paths"]["csv"]).read() == table


def test_rerun_after_losing_a_summary_or_an_unfinished_run(first, setup):
  workdir, out = first
  run_dir = os.path.join(workdir, "subsets", "random", "prune_50", "seed_0")
  paths = run_paths(run_dir)
  summary = open(paths["summary"]).read()
  # Only summary.json lost: the final checkpoint is there, so nothing is retrained; the
  # summary is written again, identical but for the measured seconds of its accounting
  # (loop._finish: the rewrite adds this call's setup and restore to the checkpoint's
  # accounting, so those are new wall-clock readings; its counters are not).
  os.remove(paths["summary"])
  again = run_figure1(workdir, *setup, _config(), _seeds, progress=False)
  assert again["trainings_run"] == 0
  before, after = json.loads(summary), json.load(open(paths["summary"]))
  account_before, account_after = before.pop("accounting"), after.pop("accounting")
  assert after == before
  assert account_after.keys() == account_before.keys()
  counters = [k for k in account_before if not k.endswith("_seconds")]
  assert "optimizer_steps" in counters and "train_examples" in counters
  assert {k: account_after[k] for k in counters} == {k: account_before[k] for k in counters}
  # The training phase is the checkpoint's, unchanged; the rewrite's readings still add up.
  assert account_after["train_seconds"] == account_before["train_seconds"]
  assert account_after["phases_seconds"] + account_after["unaccounted_seconds"] == \
      pytest.approx(account_after["wall_seconds"], abs=2e-3)
  assert again["rows"] == out["rows"]
  # A run interrupted before its end (no summary, no final checkpoint): exactly that run
  # trains again, from its last checkpoint (step 0 here), to the same result.
  os.remove(paths["summary"])
  shutil.rmtree(os.path.join(paths["checkpoints"], str(NUM_STEPS)))
  resumed = run_figure1(workdir, *setup, _config(), _seeds, progress=False)
  assert resumed["trainings_run"] == 1
  assert resumed["rows"] == out["rows"]
  summary_json = json.loads(summary)
  assert json.load(open(paths["summary"]))["test_accuracy"] == summary_json["test_accuracy"]


def test_a_method_whose_score_is_not_computed_fails_before_writing(first, setup):
  workdir, _ = first
  before = {p: os.path.getmtime(os.path.join(workdir, "results", p))
            for p in os.listdir(os.path.join(workdir, "results"))}
  with pytest.raises(ValueError, match=r"methods use scores \['el2n'\] that are not in "
                                       r"--figure1_scores"):
    run_figure1(workdir, *setup, _config(score_names=("input_norm",)), _seeds, progress=False)
  after = {p: os.path.getmtime(os.path.join(workdir, "results", p))
           for p in os.listdir(os.path.join(workdir, "results"))}
  assert after == before


def test_bad_fractions_and_strategies_are_rejected_in_process():
  for fraction in (1.0, 0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match=rf"prune fraction {fraction} must lie in \(0, 1\)"):
      _config(prune_fractions=(0.3, fraction))
  with pytest.raises(ValueError, match=r"unknown strategy 'sideways'; use one of hardest"):
    parse_method("el2n:sideways")
  with pytest.raises(ValueError, match=r"unknown score 'el3n'"):
    parse_method("el3n:hardest")


def test_bad_figure1_flags_fail_clearly_and_write_no_results(tmp_path, tmp_path_factory):
  """Through the CLI: exit 2, one `error:` line, and no results/ (nor any stage) written."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_compile_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  common = ["--mode=figure1", "--dataset=digits", f"--num_steps={NUM_STEPS}",
            f"--batch_size={BATCH}", "--score_runs=1", f"--score_step={SCORE_STEP}",
            "--grand_init_runs=2", "--num_seeds=1", "--model=small_cnn", "--num_filters=4",
            "--augment=false", "--eval_every_steps=-1", "--save_steps=-1", "--noprogress"]
  cases = {
      "fraction_one": (["--methods=random,el2n:hardest", "--prune_fractions=0.3,1.0"],
                       "prune fraction 1.0 must lie in (0, 1)"),
      "unknown_strategy_and_missing_score": (
          ["--methods=random,el2n:sideways", "--prune_fractions=0.5",
           "--figure1_scores=input_norm"], "unknown strategy 'sideways'"),
  }
  procs = {}
  for name, (extra, _) in cases.items():  # in parallel: each fails after loading the data
    workdir = tmp_path / name
    procs[name] = (workdir, subprocess.Popen(
        [sys.executable, "-m", "experiments.cifar", *common, f"--workdir={workdir}", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for name, (workdir, proc) in procs.items():
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stderr[-2000:]}"
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, f"{name}:\n{stderr[-2000:]}"
    assert cases[name][1] in lines[0], f"{name}: {lines[0]}"
    for folder in ("results", "subsets", "scores", "score_runs", "full"):
      assert not (workdir / folder).exists(), f"{name}: wrote {folder}/"


def test_label_noise_is_recorded_and_detection_precision_is_reported(tmp_path, setup):
  """With --label_noise_fraction the pipeline trains on noisy labels, records exactly which
  labels changed, and reports each score's precision at finding them."""
  dataset, model, optimizer, train = setup
  workdir = str(tmp_path / "noisy")
  config = _config(methods=(parse_method("el2n:hardest"),), score_names=("el2n", "input_norm"),
                   include_full=False)
  out = run_figure1(workdir, dataset, model, optimizer, train, config, _seeds, progress=False,
                    label_noise_fraction=0.2, label_noise_seed=7)
  record = np.load(os.path.join(workdir, "label_noise.npz"))
  changed = record["changed_ids"]
  # Independently: the original's rule, a seeded choice of int(N * f) ids whose labels are
  # permuted among themselves; the record lists exactly the ids whose label differs.
  labels = dataset.train_labels
  rng = np.random.RandomState(7)
  chosen = rng.choice(len(labels), int(len(labels) * 0.2), replace=False)
  noisy = labels.copy()
  noisy[np.sort(chosen)] = noisy[chosen]
  np.testing.assert_array_equal(changed, np.flatnonzero(noisy != labels))
  assert len(changed) > 0.15 * len(labels)
  # The EL2N scores were computed on the noisy labels: recompute precision@k from them.
  el2n = np.load(os.path.join(workdir, "scores", "el2n", f"step_{SCORE_STEP}.npy"))
  k = len(changed)
  top = np.argsort(-el2n, kind="stable")[:k]
  expected = len(set(top.tolist()) & set(changed.tolist())) / k
  rows = {r["score"]: r for r in _read_csv(out["paths"]["noisy_csv"])}
  assert int(rows["EL2N@10"]["k"]) == k
  assert float(rows["EL2N@10"]["precision_at_k"]) == pytest.approx(expected)
  assert "Label noise" in open(out["paths"]["markdown"]).read()


def test_report_only_trains_nothing_and_lists_unfinished_runs(first, setup, tmp_path):
  workdir, out = first
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, "subsets", "random", "prune_50", "seed_0", "summary.json"))
  report = run_figure1(copy, *setup, _config(), _seeds, progress=False, report_only=True)
  assert report["trainings_run"] == 0
  assert report["missing"] == ["random prune 50% seed 0"]
  expected = [r for r in out["rows"] if r["key"] != "random"]
  assert report["rows"] == expected
  assert "Not finished yet" in open(report["paths"]["markdown"]).read()
  # No run was started for the unfinished one: its last checkpoint is still the one it had.
  assert not os.path.exists(os.path.join(copy, "subsets", "random", "prune_50", "seed_0",
                                         "summary.json"))
  # While the sweep is still scoring: methods whose scores are missing are listed as not
  # finished, and what is finished is still reported.
  shutil.rmtree(os.path.join(copy, "scores", "el2n"))
  report = run_figure1(copy, *setup, _config(), _seeds, progress=False, report_only=True)
  assert report["trainings_run"] == 0
  assert report["missing"] == ["random prune 50% seed 0", "el2n-hardest prune 50% seed 0 (its "
                               "scores are not computed yet)"]
  assert report["rows"] == [r for r in out["rows"] if r["key"] == "full"]
  assert "EL2N@10" not in open(report["paths"]["correlations_csv"]).read()


def test_a_run_another_process_finishes_meanwhile_is_reported(first, setup, tmp_path,
                                                              monkeypatch):
  """Two processes share a sweep: a run the other process holds when this one reaches it is
  skipped, but if it finishes before this process reports, the report includes it (the
  report is a pass over the disk after the training, not a record of this process's
  loop). Found on the SST-2 sweep: each lane's results.md listed as "not finished" runs
  the other lane had finished 20 minutes before."""
  import datadiet_jax.pipelines.figure1 as figure1
  from datadiet_jax.sweep.lock import RunLockedError
  workdir, out = first
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  held = os.path.join(copy, "subsets", "random", "prune_50", "seed_0")
  finished = os.path.join(str(tmp_path), "finished_elsewhere")
  shutil.move(held, finished)  # the other process's result, not on disk yet
  real_train_run = figure1.train_run

  skipped = []

  def train_run(folder, *args, **kwargs):
    if folder == held and not skipped:  # held by the other process: skipped
      skipped.append(folder)
      raise RunLockedError(folder, {"pid": 1, "host": "other"})
    if skipped and os.path.exists(finished):  # it finishes while this one trains the next
      shutil.rmtree(held)  # (the plan wrote its kept ids there again)
      shutil.move(finished, held)
    return real_train_run(folder, *args, **kwargs)

  monkeypatch.setattr(figure1, "train_run", train_run)
  again = run_figure1(copy, *setup, _config(), _seeds, progress=False)
  assert skipped == [held] and again["missing"] == []
  assert again["rows"] == out["rows"]
  assert "Not finished yet" not in open(again["paths"]["markdown"]).read()


# --ensemble_members: the sweep's own seeds train as ensembles (datadiet_jax/pipelines/figure1.py
# _train_seed_ensembles). A small sweep (2 seeds, random + EL2N-hardest at 50 %, 8 steps)
# trained with ensembles of 2 must report what the same sweep trained one run at a time
# reports, to tests/test_ensemble.py's ensemble-vs-lone tolerance; its single score run
# trains alone in both, so the scores, hence the kept ids, are bitwise equal.
ENSEMBLE_STEPS = 8


@pytest.fixture(scope="module")
def ensemble_setup(setup):
  dataset, model, optimizer, _ = setup
  train = TrainConfig(num_steps=ENSEMBLE_STEPS, batch_size=BATCH, eval_every_steps=4,
                      save_steps=2, augment=True)
  config = _config(score_names=("el2n",), score_step=4, score_train_steps=4, num_seeds=2)
  return dataset, model, optimizer, train, config


def _ensemble_sweep(workdir, ensemble_setup, members):
  dataset, model, optimizer, train, config = ensemble_setup
  return run_figure1(str(workdir), dataset, model, optimizer, train, config, _seeds,
                     progress=False, ensemble_members=members)


def _sweep_run_dirs(workdir):
  dirs = [os.path.join(workdir, "full", f"seed_{m}") for m in range(2)]
  return dirs + [os.path.join(workdir, "subsets", key, "prune_50", f"seed_{m}")
                 for key in ("random", "el2n-hardest") for m in range(2)]


@pytest.fixture(scope="module")
def lone_and_ensemble(tmp_path_factory, ensemble_setup):
  base = tmp_path_factory.mktemp("figure1_ensemble")
  lone = _ensemble_sweep(base / "lone", ensemble_setup, 1)
  messages = []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: messages.append(record.getMessage())
  logger = logging.getLogger("datadiet_jax")
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    ensemble = _ensemble_sweep(base / "ensemble", ensemble_setup, 2)
  finally:
    logger.removeHandler(handler)
  return base, lone, ensemble, "\n".join(messages)


def test_sweep_seeds_train_as_ensembles_and_equal_lone_runs(lone_and_ensemble, ensemble_setup):
  from test_ensemble import assert_same_run
  base, lone, ensemble, log_text = lone_and_ensemble
  dataset, model, optimizer, train, config = ensemble_setup
  # 2 full + 2 methods x 2 seeds trainings in both; in the ensemble sweep they trained as
  # three 2-member ensembles (the full seeds; then each seed's random and EL2N subsets).
  assert lone["trainings_run"] == ensemble["trainings_run"] == 6
  assert log_text.count("2 members (map)") == 3, log_text
  assert "full data, seed 0 .. full data, seed 1 (2 members)" in log_text
  # Same rows in the same order; numbers to the ensemble-vs-lone tolerance.
  assert [(r["key"], r["seed"]) for r in ensemble["rows"]] == [
      ("full", 0), ("random", 0), ("el2n-hardest", 0), ("full", 1), ("random", 1),
      ("el2n-hardest", 1)]
  for a, b in zip(ensemble["rows"], lone["rows"]):
    assert {k: v for k, v in a.items() if k not in ("test_accuracy", "test_loss")} == \
        {k: v for k, v in b.items() if k not in ("test_accuracy", "test_loss")}
    assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4, abs=1e-5)
  for a, b in zip(_sweep_run_dirs(str(base / "ensemble")), _sweep_run_dirs(str(base / "lone"))):
    assert os.path.relpath(a, base / "ensemble") == os.path.relpath(b, base / "lone")
    if "subsets" in a:  # kept ids: bitwise (the random subsets differ per seed)
      np.testing.assert_array_equal(np.load(os.path.join(a, "kept_ids.npy")),
                                    np.load(os.path.join(b, "kept_ids.npy")))
    run_train = train if "full" in a else dataclasses.replace(
        train, schedule_steps_per_epoch=dataset.num_train // BATCH)
    seeds = _seeds(int(a[-1]))
    for step in (4, ENSEMBLE_STEPS):  # state, forgetting, metrics.csv, summary fields
      assert_same_run(a, b, model, dataset, run_train, seeds, step, optimizer=optimizer)
    summary_a, summary_b = (json.load(open(run_paths(r)["summary"])) for r in (a, b))
    assert summary_a["outcome"] == summary_b["outcome"]
    assert summary_a["test_accuracy"] == pytest.approx(summary_b["test_accuracy"], abs=1e-6)
  random0, random1 = (np.load(os.path.join(base, "ensemble", "subsets", "random", "prune_50",
                                           f"seed_{m}", "kept_ids.npy")) for m in (0, 1))
  assert not np.array_equal(random0, random1)
  # The report is the lone sweep's (the per-cell table: same cells, same counts).
  table_a, table_b = (_read_csv(out["paths"]["csv"]) for out in (ensemble, lone))
  assert [(t["key"], t["num_seeds"], t["num_ok"]) for t in table_a] == \
      [(t["key"], t["num_seeds"], t["num_ok"]) for t in table_b]
  # A rerun trains nothing and reports the same rows.
  again = _ensemble_sweep(base / "ensemble", ensemble_setup, 2)
  assert again["trainings_run"] == 0 and again["rows"] == ensemble["rows"]


def test_sweep_ensemble_killed_mid_group_resumes_exactly(lone_and_ensemble, ensemble_setup,
                                                         tmp_path, monkeypatch):
  """The process dies after step 5 of the first subset ensemble (seed 0's random and EL2N
  runs: checkpoints 0, 2, 4) and one member also lost its step-4 checkpoint; the rerun
  restarts that group from step 2 and ends bitwise where the uninterrupted sweep ended."""
  from test_ensemble import assert_same_run
  import datadiet_jax.pipelines.train_runs as train_runs_module
  base, _, ensemble, _ = lone_and_ensemble
  dataset, model, optimizer, train, _ = ensemble_setup
  real = train_runs_module.train_ensemble

  class Killed(Exception):
    pass

  def dies_in_the_first_subset_group(run_dirs, *args, **kwargs):
    if len(run_dirs) > 1 and "subsets" in run_dirs[0]:
      real(run_dirs, *args, **{**kwargs, "stop_after_step": 5})
      raise Killed
    return real(run_dirs, *args, **kwargs)

  # From the finished sweep's scores and full-data runs (as a rerun finds them), without its
  # subset runs: the subsets' ensembles train again, and the first one is killed.
  workdir = tmp_path / "killed"
  shutil.copytree(base / "ensemble", workdir)
  shutil.rmtree(workdir / "subsets")
  monkeypatch.setattr(train_runs_module, "train_ensemble", dies_in_the_first_subset_group)
  with pytest.raises(Killed):
    _ensemble_sweep(workdir, ensemble_setup, 2)
  monkeypatch.undo()
  group = [os.path.join(workdir, "subsets", key, "prune_50", "seed_0")
           for key in ("random", "el2n-hardest")]
  for run_dir in group:
    assert not os.path.exists(run_paths(run_dir)["summary"])
    assert sorted(os.listdir(run_paths(run_dir)["checkpoints"])) == ["0", "2", "4"]
  shutil.rmtree(os.path.join(run_paths(group[1])["checkpoints"], "4"))
  resumed = _ensemble_sweep(workdir, ensemble_setup, 2)
  assert resumed["trainings_run"] == 4  # the interrupted group and seed 1's subsets
  assert resumed["rows"] == ensemble["rows"]  # bitwise: the same compiled program
  pruned = dataclasses.replace(train, schedule_steps_per_epoch=dataset.num_train // BATCH)
  for run_dir in group:
    reference = os.path.join(base, "ensemble", os.path.relpath(run_dir, workdir))
    assert_same_run(run_dir, reference, model, dataset, pruned, _seeds(0), ENSEMBLE_STEPS,
                    exact=True, optimizer=optimizer)


def test_offset_windows_pair_against_their_own_scores_keep_hardest():
  """offset_pairs: each `<score>-offset<k>` against `<score>-hardest` (never another score's),
  per fraction and seed; numbers checked against a hand computation (t-interval, scipy's
  paired t-test) and a failed run left unpaired."""
  from scipy import stats
  from datadiet_jax.pipelines.figure1 import offset_pairs, parse_method
  acc = {("el2n-hardest", 0.5): [0.80, 0.82, 0.78], ("el2n-offset1", 0.5): [0.83, 0.82, 0.80],
         ("grand_head-hardest", 0.5): [0.10, 0.10, 0.10],
         ("el2n-offset5", 0.3): [0.90, 0.91, 0.92], ("el2n-hardest", 0.3): [0.88, 0.90, 0.93],
         ("random", 0.5): [0.81, 0.81, 0.81]}
  label = {"el2n-hardest": "EL2N, keep hardest", "el2n-offset1": "EL2N, offset 1 %",
           "el2n-offset5": "EL2N, offset 5 %", "grand_head-hardest": "GraNd, keep hardest",
           "random": "random"}
  rows = [{"method": label[k], "key": k, "prune_fraction": f, "seed": s,
           "outcome": "failed" if (k, f, s) == ("el2n-offset5", 0.3, 2) else "ok",
           "test_accuracy": a} for (k, f), accs in acc.items() for s, a in enumerate(accs)]
  methods = [parse_method(m) for m in
             ("random", "el2n:hardest", "el2n:offset1", "el2n:offset5", "grand_head:hardest")]
  pairs = {(p.method, p.fraction): p for p in offset_pairs(rows, methods)}
  assert set(pairs) == {("EL2N, offset 1 %", 0.5), ("EL2N, offset 5 %", 0.3)}
  p = pairs[("EL2N, offset 1 %", 0.5)]
  diffs = np.array([0.03, 0.0, 0.02])
  half = stats.sem(diffs) * stats.t.ppf(0.975, 2)
  assert p.baseline == "EL2N, keep hardest" and p.num_pairs == 3
  assert p.mean_difference == pytest.approx(diffs.mean())
  assert (p.ci_low, p.ci_high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
  assert p.p_value == pytest.approx(stats.ttest_rel([0.83, 0.82, 0.80], [0.80, 0.82, 0.78]).pvalue)
  q = pairs[("EL2N, offset 5 %", 0.3)]
  assert q.num_pairs == 2 and q.seeds_unpaired == (2,)
  assert q.mean_difference == pytest.approx(np.mean([0.02, 0.01]))
  assert offset_pairs([r for r in rows if "offset" not in r["key"]], methods) == []
