"""The methods since 2021 in one Figure-1 sweep (issue 20): score runs that accumulate the
training dynamics (AUM, Dyn-Unc, DUAL, TDDS) give prunable score files, the sweep keeps the
subsets a brute-force top-k of those files keeps, CCS strata run on them, and RS2 trains
the step budget of the static subsets on a fresh random slice every epoch (the dealer of
tests/test_rs2.py)."""

import json
import os

import numpy as np

from datadiet_jax.pipelines.figure1 import Figure1Config, parse_method, run_figure1
from datadiet_jax.prune import original_random_seed
from datadiet_jax.prune.dynamic import DynamicConfig, make_dynamic_policy
from datadiet_jax.train.loop import TrainConfig, run_paths
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.train.subset import load_policy_state

from test_rs2 import brute_force_rounds

# The dynamics are read at the score runs' last step (6 epochs of 22 steps), like forgetting,
# not at --score_step (the model scores' checkpoint).
BATCH, WINDOW, SCORE_STEP, SCORE_TRAIN, PRUNE = 64, 3, 22, 132, 0.5
DYNAMICS = ("aum", "dyn_unc", "dual", "tdds")
METHODS = ("random", "aum:hardest", "dyn_unc:hardest", "dual:hardest", "tdds:hardest",
           "aum:ccs", "rs2")


def _seeds(run):
  return 42 + run * 424242, 4242 + run * 424242


def test_dynamics_scores_and_rs2_run_in_one_figure1_sweep(tmp_path, digits, model):
  optimizer = OptimizerConfig(learning_rate=0.05)
  train = TrainConfig(num_steps=44, batch_size=BATCH, eval_every_steps=-1, save_steps=0,
                      augment=False, track_dynamics=DYNAMICS, dynamics_window=WINDOW)
  config = Figure1Config(methods=tuple(parse_method(m) for m in METHODS),
                         prune_fractions=(PRUNE,), score_names=DYNAMICS, num_score_runs=2,
                         score_step=SCORE_STEP, score_train_steps=SCORE_TRAIN,
                         grand_init_runs=1, num_seeds=1, include_full=False)
  workdir = str(tmp_path / "work")
  out = run_figure1(workdir, digits, model, optimizer, train, config, _seeds, progress=False)
  n = digits.num_train
  keep = n - int(np.floor(n * PRUNE))
  rows = {r["key"]: r for r in out["rows"]}
  assert list(rows) == ["random", "aum-hardest", "dyn_unc-hardest", "dual-hardest",
                        "tdds-hardest", "aum-ccs", "rs2"]
  assert rows["rs2"]["method"] == "RS2 (random subset per epoch)"
  assert rows["dyn_unc-hardest"]["method"] == "Dyn-Unc, keep hardest"
  assert rows["aum-ccs"]["method"] == "AUM, CCS"
  for row in rows.values():
    assert row["num_kept"] == keep and row["num_steps"] == 44, row
    assert row["outcome"] in ("ok", "failed")

  def kept(key):
    return np.load(os.path.join(workdir, "subsets", key, "prune_50", "seed_0", "kept_ids.npy"))

  # Each dynamics score file is the mean of the score runs' accumulators at the score step,
  # and keep-hardest keeps its `keep` highest scores (brute force: a stable argsort).
  for name in DYNAMICS:
    per_run = [np.load(os.path.join(workdir, "score_runs", "runs", f"run_{r}", "dynamics",
                                    f"{name}.npy")) for r in range(2)]
    score = np.load(os.path.join(workdir, "scores", name, f"step_{SCORE_TRAIN}.npy"))
    np.testing.assert_allclose(score, np.mean(per_run, axis=0), rtol=1e-6)
    assert len(np.unique(score)) > n // 2
    expected = np.sort(np.argsort(-score.astype(np.float64), kind="stable")[:keep])
    np.testing.assert_array_equal(kept(f"{name}-hardest"), expected)
  # Only the score runs track the dynamics; the retraining runs track forgetting alone.
  assert os.path.isdir(os.path.join(workdir, "score_runs", "runs", "run_0", "dynamics"))
  assert not os.path.exists(os.path.join(workdir, "subsets", "random", "prune_50", "seed_0",
                                         "dynamics"))
  ccs = kept("aum-ccs")
  assert len(ccs) == keep and len(np.unique(ccs)) == keep
  assert not np.array_equal(ccs, kept("aum-hardest"))

  # RS2: no fixed subset; epoch e trains round e of the dealer seeded as random's seed 0.
  rs2 = os.path.join(workdir, "subsets", "rs2", "prune_50", "seed_0")
  assert not os.path.exists(os.path.join(rs2, "kept_ids.npy"))
  summary = json.load(open(run_paths(rs2)["summary"]))
  assert summary["policy"]["score"] == "rs2"
  steps = keep // BATCH
  assert summary["accounting"]["train_examples"] == 44 * BATCH
  assert summary["accounting"]["scored_examples"] == 0
  rounds = brute_force_rounds(n, keep / n, original_random_seed(0), 44 // steps)
  like = make_dynamic_policy(DynamicConfig("rs2", keep / n, warmup_epochs=0, rescore_every=1,
                                           seed=original_random_seed(0)),
                             None, digits).init_state()
  for epoch, expected in enumerate(rounds):
    _, plan, where = load_policy_state(rs2, epoch * steps, like)
    assert where["epoch"] == epoch and set(plan.ids.tolist()) == expected
  # A rerun trains nothing and returns the same table.
  again = run_figure1(workdir, digits, model, optimizer, train, config, _seeds, progress=False)
  assert again["trainings_run"] == 0
  assert [r["test_accuracy"] for r in again["rows"]] == [r["test_accuracy"] for r in out["rows"]]
