"""RS2 without replacement (Okanovic et al. 2024, Algorithm 1) as a dynamic subset policy:
the subsets against a brute-force dealer, exact resume, and the dynamic sweep's rs2 cells."""

import csv
import json
import os

import numpy as np
import pytest

from datadiet_jax.prune.dynamic import (DynamicConfig, PeriodicRescoring, make_dynamic_policy,
                                        rs2_pass_seed)
from datadiet_jax.train.loop import PHASES, TrainConfig, run_paths, train_run
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.train.subset import load_policy_state

OPTIMIZER = OptimizerConfig(learning_rate=0.05, decay_epochs=(3,))


def brute_force_rounds(n: int, ratio: float, seed: int, rounds: int) -> list[set]:
  """A stateful dealer, one id at a time: a pass's permutation is a queue; a round pops
  floor(n r) ids; when fewer are left, the rest are dropped and the next pass's
  permutation (the same seeded RandomState draws as the policy's) refills the queue."""
  size, queue, passes, out = int(np.floor(n * ratio + 1e-9)), [], 0, []
  for _ in range(rounds):
    if len(queue) < size:
      queue = list(np.random.RandomState(rs2_pass_seed(seed, passes)).permutation(n))
      passes += 1
    subset = set()
    for _ in range(size):
      subset.add(int(queue.pop(0)))
    out.append(subset)
  return out


def test_rs2_subsets_over_seven_rounds_equal_a_brute_force_dealer():
  n, ratio, seed = 10, 0.3, 7
  config = DynamicConfig("rs2", keep_fraction=ratio, warmup_epochs=0, rescore_every=1,
                         seed=seed)
  policy = PeriodicRescoring(config, np.zeros(n, np.int32))
  state, subsets = policy.init_state(), []
  for epoch in range(7):
    state, plan = policy.plan_epoch(state, epoch, None)
    assert plan.scored_examples == 0 and plan.weights is None
    assert plan.ids.dtype == np.int32 and np.all(np.diff(plan.ids) > 0)  # sorted, distinct
    subsets.append(set(plan.ids.tolist()))
  expected = brute_force_rounds(n, ratio, seed, 7)
  assert subsets == expected
  # By hand: rounds of 3, 3 rounds per pass (id 10 - 9 = 1 left over each pass). Rounds
  # 0-2 are disjoint (9 distinct ids), so are 3-5; round 6 opens the third pass.
  for first in (0, 3):
    assert len(set.union(*subsets[first:first + 3])) == 9
  assert state.num_scorings == 7
  # With warm-up 2 and a period of 2 epochs the rounds fall on epochs 2, 4, 6, ...: the
  # same sequence of subsets, round by round.
  spaced = PeriodicRescoring(DynamicConfig("rs2", ratio, warmup_epochs=2, rescore_every=2,
                                           seed=seed), np.zeros(n, np.int32))
  state, got = spaced.init_state(), []
  for epoch in range(2 + 2 * 4):
    state, plan = spaced.plan_epoch(state, epoch, None)
    if epoch >= 2 and epoch % 2 == 0:
      got.append(set(plan.ids.tolist()))
    elif epoch < 2:
      assert len(plan.ids) == n
  assert got == expected[:4]
  # Another seed deals other subsets.
  assert brute_force_rounds(n, ratio, seed + 1, 7) != expected


def test_rs2_with_ratio_one_trains_on_all_data_every_epoch():
  policy = PeriodicRescoring(DynamicConfig("rs2", 1.0, warmup_epochs=0, seed=3),
                             np.zeros(5, np.int32))
  state = policy.init_state()
  for epoch in range(3):
    state, plan = policy.plan_epoch(state, epoch, None)
    np.testing.assert_array_equal(plan.ids, np.arange(5))


def test_rs2_run_stopped_after_round_two_resumes_with_the_same_subsets(tmp_path, digits,
                                                                       model):
  batch, epochs, ratio, seed = 64, 5, 0.3, 2
  keep = int(digits.num_train * ratio)  # 432 ids: 3 rounds per pass, 6 steps per round
  steps = keep // batch
  config = DynamicConfig("rs2", ratio, warmup_epochs=0, rescore_every=1, seed=seed)
  train = TrainConfig(num_steps=epochs * (digits.num_train // batch), batch_size=batch,
                      eval_every_steps=-1, save_steps=0, augment=False,
                      track_forgetting=False)
  whole = train_run(str(tmp_path / "whole"), model, digits, OPTIMIZER, train, 1, seed,
                    progress=False, policy=make_dynamic_policy(config, model, digits),
                    num_epochs=epochs)
  part_dir = str(tmp_path / "part")
  part = train_run(part_dir, model, digits, OPTIMIZER, train, 1, seed, progress=False,
                   policy=make_dynamic_policy(config, model, digits), num_epochs=epochs,
                   stop_after_step=2 * steps)  # rounds 0 and 1 trained
  assert part.final_step == 2 * steps
  rest = train_run(part_dir, model, digits, OPTIMIZER, train, 1, seed, progress=False,
                   policy=make_dynamic_policy(config, model, digits), num_epochs=epochs)
  assert rest.final_step == whole.final_step == epochs * steps
  assert rest.test_accuracy == whole.test_accuracy
  expected = brute_force_rounds(digits.num_train, ratio, seed, epochs)
  like = make_dynamic_policy(config, model, digits).init_state()
  for run in (whole.run_dir, rest.run_dir):
    # The checkpoint at the start of epoch e (step e x steps) holds epoch e's plan.
    for epoch in range(epochs):
      _, plan, where = load_policy_state(run, epoch * steps, like)
      assert where["epoch"] == epoch
      assert set(plan.ids.tolist()) == expected[epoch], (run, epoch)
    summary = json.load(open(run_paths(run)["summary"]))
    assert summary["policy"]["score"] == "rs2"
    assert summary["accounting"]["train_examples"] == epochs * steps * batch
    assert summary["accounting"]["scored_examples"] == 0


def test_dynamic_sweep_with_rs2_uses_exactly_the_keep_fraction_of_compute(tmp_path, digits,
                                                                         model):
  from datadiet_jax.pipelines.dynamic_sweep import DynamicSweepConfig, run_dynamic_sweep
  # digits: 1442 = 14 x 103 train ids, so batch 103 leaves no remainder: a full epoch is
  # 14 steps and an epoch of floor(0.5 x 1442) = 721 ids exactly 7.
  batch, epochs = 103, 3
  config = DynamicSweepConfig(num_epochs=epochs, methods=("full", "dynamic_random", "rs2"),
                              keep_fractions=(0.5,), num_seeds=1, warmup_epochs=1)
  base = TrainConfig(num_steps=epochs * 14, batch_size=batch, eval_every_steps=-1,
                     save_steps=-1, augment=False, track_forgetting=False, tensorboard=False)
  out = run_dynamic_sweep(str(tmp_path), digits, model, OPTIMIZER, base, config,
                          lambda m: (10 + m, 20 + m), progress=False)
  assert not out["missing"]
  table = {r["method"]: r for r in out["table"]}
  assert table["rs2"]["compute_fraction"] == 0.5
  assert table["rs2"]["optimizer_steps"] == 3 * 7 and table["rs2"]["scored_examples"] == 0
  # dynamic random keeps the warm-up epoch on all data: (14 + 2 x 7) / (3 x 14).
  assert table["dynamic_random"]["compute_fraction"] == pytest.approx(28 / 42, abs=1e-12)
  assert table["full"]["compute_fraction"] == 1.0
  # The policy's seed is the run's data seed (20): step 0's checkpoint holds round 0.
  run = os.path.join(str(tmp_path), "dynamic", "rs2", "keep_50", "seed_0")
  summary = json.load(open(run_paths(run)["summary"]))
  assert summary["policy"]["warmup_epochs"] == 0 and summary["policy"]["rescore_every"] == 1
  like = make_dynamic_policy(DynamicConfig("rs2", 0.5, warmup_epochs=0), model,
                             digits).init_state()
  _, plan, _ = load_policy_state(run, 0, like)
  assert set(plan.ids.tolist()) == brute_force_rounds(digits.num_train, 0.5, 20, 1)[0]
  # The time columns are the loop's measured phases (tests/test_phase_timing.py), and the
  # wall fraction is (train + data + score seconds) / full data's, from the summaries.
  work, whole = {}, {}
  with open(out["paths"]["runs_csv"]) as f:
    for row in csv.DictReader(f):
      folder = os.path.join(str(tmp_path), "dynamic", row["method"],
                            "all" if row["method"] == "full" else "keep_50", "seed_0")
      account = json.load(open(run_paths(folder)["summary"]))["accounting"]
      for key in ("train_seconds", "data_seconds", "score_seconds", "eval_seconds",
                  "checkpoint_seconds", "wall_seconds", "unaccounted_seconds"):
        assert float(row[key]) == pytest.approx(account[key], abs=1e-9), key
      phases = sum(account[k] for k in PHASES)
      assert abs(account["wall_seconds"] - phases) < max(0.05 * account["wall_seconds"], 0.5)
      work[row["method"]] = (account["train_seconds"] + account["data_seconds"]
                             + account["score_seconds"])
      whole[row["method"]] = account["wall_seconds"]
  for method in ("rs2", "dynamic_random"):
    assert table[method]["wall_fraction"] == pytest.approx(work[method] / work["full"],
                                                           rel=1e-9)
    assert table[method]["run_wall_fraction"] == pytest.approx(
        whole[method] / whole["full"], rel=1e-9)
  markdown = open(out["paths"]["markdown"]).read()
  assert "| RS2 (no replacement) | keep 50% |" in markdown
  assert "RS2 (no replacement), keep 50%" in open(out["paths"]["paired_csv"]).read()
