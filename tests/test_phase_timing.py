"""The time accounting of a run (issue 19, item 4b): every phase is timed directly by the
loop, and the phases of a tiny dynamic run add up to an outer wall-clock timer around the
whole train_run call.

Tolerance: max(5 % of the outer time, 0.5 s). What lies outside the phases is the loop's
own bookkeeping between them (the cadence arithmetic, the progress bar, switched off
here: microseconds a step) and, outside the run's clock, train_run's lock file and
is_finished check and the final summary.json write (milliseconds); 0.5 s leaves room for
the scheduler on 2 shared cores, 5 % for longer runs."""

import json
import logging
import time

import pytest

from datadiet_jax.prune.dynamic import DynamicConfig, make_dynamic_policy
from datadiet_jax.train.loop import PHASES, TrainConfig, run_paths, train_run
from datadiet_jax.train.optimizer import OptimizerConfig

BATCH = 64
OPTIMIZER = OptimizerConfig(learning_rate=0.05, decay_epochs=(3,))


def _tolerance(outer: float) -> float:
  return max(0.05 * outer, 0.5)


def _run(run_dir, digits, model, **kwargs):
  train = TrainConfig(num_steps=3 * (digits.num_train // BATCH), batch_size=BATCH,
                      eval_every_steps=0, save_steps=0, augment=False,
                      track_forgetting=False, tensorboard=False)
  policy = make_dynamic_policy(DynamicConfig("el2n", 0.5, warmup_epochs=1, seed=3), model,
                               digits)
  tick = time.perf_counter()
  result = train_run(run_dir, model, digits, OPTIMIZER, train, 1, 2, progress=False,
                     policy=policy, num_epochs=3, **kwargs)
  return result, time.perf_counter() - tick


def test_dynamic_run_phases_sum_to_an_outer_wall_clock_timer(tmp_path, digits, model, caplog):
  with caplog.at_level(logging.INFO, logger="datadiet_jax"):
    result, outer = _run(str(tmp_path / "run"), digits, model)
  account = json.load(open(run_paths(result.run_dir)["summary"]))["accounting"]
  phases = {k: account[k] for k in PHASES}
  # Every phase ran (setup, the first step's compile, batches, steps, 2 EL2N re-scorings,
  # 4 evaluations, 4 checkpoints), so each took time.
  assert all(v > 0 for v in phases.values()), phases
  total = sum(phases.values())
  assert abs(outer - total) < _tolerance(outer), (outer, phases)
  # The run's own clock starts inside the call and ends before the summary is written.
  assert total - 0.01 <= account["wall_seconds"] <= outer + 0.01
  assert account["phases_seconds"] == pytest.approx(total, abs=0.01)
  assert account["unaccounted_seconds"] == pytest.approx(account["wall_seconds"] - total,
                                                         abs=0.01)
  assert 0 <= account["unaccounted_seconds"] < _tolerance(outer)
  assert account["scored_examples"] == 2 * digits.num_train
  # The run log has the same numbers.
  line = next(r.getMessage() for r in caplog.records if "unaccounted" in r.getMessage())
  assert f"wall {account['wall_seconds']:.2f} s" in line
  assert f"train {account['train_seconds']:.2f}" in line
  assert f"score {account['score_seconds']:.2f}" in line


def test_resumed_run_accounts_both_calls_up_to_the_checkpoint_it_resumed_from(tmp_path,
                                                                              digits, model):
  run_dir = str(tmp_path / "run")
  full = digits.num_train // BATCH
  part, first = _run(run_dir, digits, model, stop_after_step=full + 3)  # mid epoch 1
  assert part.final_step == full + 3
  rest, second = _run(run_dir, digits, model)
  account = json.load(open(run_paths(run_dir)["summary"]))["accounting"]
  total = sum(account[k] for k in PHASES)
  # The first call's time after its last checkpoint (step `full`, the end of epoch 0) is
  # lost with it, from the wall and the phases alike; the rest of both calls is counted.
  assert second - _tolerance(second) < total < first + second + _tolerance(first + second)
  assert abs(account["wall_seconds"] - total) < _tolerance(first + second)
  assert all(account[k] > 0 for k in PHASES), account
