"""Run outcomes: a diverged run stops at its first non-finite step (checked against an
independent replay of the pure train_step), keeps no non-finite checkpoint, is reported
again (not resumed) on a rerun; a run ending at chance level is recorded as failed."""

import json
import math
import os

import jax
import numpy as np
import pytest

from datadiet_jax.checkpoint import RunCheckpoints
from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.train import outcome
from datadiet_jax.train.forgetting import init_forget_stats
from datadiet_jax.train.loop import TrainConfig, build_run, run_paths, train_run
from datadiet_jax.train.optimizer import OptimizerConfig
from conftest import snapshot_files as _snapshot

NUM_STEPS, BATCH = 12, 32


def test_classify_outcome_at_the_chance_boundary():
  ln10 = math.log(10)
  assert outcome.chance_loss(10) == ln10
  assert outcome.classify_outcome(ln10 - 1e-9, outcome.Chance(10)) == outcome.OK
  assert outcome.classify_outcome(ln10, outcome.Chance(10)) == outcome.FAILED
  assert outcome.classify_outcome(29.1, outcome.Chance(10)) == outcome.FAILED
  assert outcome.classify_outcome(float("nan"), outcome.Chance(10)) == outcome.FAILED
  assert outcome.classify_outcome(float("inf"), outcome.Chance(10)) == outcome.FAILED
  assert outcome.classify_outcome(None, outcome.Chance(10)) == outcome.FAILED
  assert outcome.classify_outcome(0.1, outcome.Chance(10), diverged=True) == outcome.DIVERGED
  assert outcome.classify_outcome(0.6, outcome.Chance(2)) == outcome.OK  # ln 2 = 0.693
  assert outcome.classify_outcome(0.7, outcome.Chance(2)) == outcome.FAILED
  # Summaries written before outcomes were recorded are classified from their test loss.
  assert outcome.outcome_of_summary({"test_loss": 0.5}, outcome.Chance(10)) == outcome.OK
  assert outcome.outcome_of_summary({"test_loss": 2.4}, outcome.Chance(10)) == outcome.FAILED
  assert outcome.outcome_of_summary({"outcome": "diverged"}, outcome.Chance(10)) == outcome.DIVERGED
  with pytest.raises(ValueError):
    outcome.chance_loss(1)


def test_accuracy_clearly_above_chance_overrules_a_loss_above_ln_c():
  """The run that prompted the rule (figure1_cifar10_cpu, EL2N keep easiest 50 %, seed 0):
  39.74 % test accuracy at test loss 2.6807 >= ln 10 = 2.3026 - confident on its mistakes,
  not at chance. Balanced 10-class test split of 10,000: majority share 0.1, one binomial
  standard error sqrt(0.1 * 0.9 / 10000) = 0.003, so the bound is 0.1 + 3 * 0.003 = 0.109."""
  labels = np.repeat(np.arange(10), 1000)
  chance = outcome.chance_of(type("D", (), {"num_classes": 10, "test_labels": labels})())
  assert chance == outcome.Chance(10, 0, 0.1, 10000)
  assert chance.accuracy_above(0.1091) and not chance.accuracy_above(0.1089)
  assert outcome.classify_outcome(2.6807, chance, test_accuracy=0.3974) == outcome.OK
  assert outcome.classify_outcome(2.6807, chance, test_accuracy=0.105) == outcome.FAILED   # at chance
  assert outcome.classify_outcome(float("nan"), chance, test_accuracy=0.9) == outcome.FAILED  # non-finite loss
  assert outcome.classify_outcome(2.0, chance, test_accuracy=0.05) == outcome.OK  # the loss rule alone: ok
  # Without the label counts only the loss rule applies (the behaviour of old callers).
  assert outcome.classify_outcome(2.6807, outcome.Chance(10), test_accuracy=0.3974) == outcome.FAILED
  # A summary recorded "failed" under the loss-only rule is read by today's rule.
  recorded = {"outcome": "failed", "test_loss": 2.6807, "test_accuracy": 0.3974}
  assert outcome.outcome_of_summary(recorded, chance) == outcome.OK
  assert outcome.outcome_of_summary(recorded, outcome.Chance(10)) == outcome.FAILED
  assert outcome.outcome_of_summary({**recorded, "outcome": "diverged"}, chance) == outcome.DIVERGED
  # Imbalanced labels (ATIS-like: 70 % one intent, 893 test examples): the bound is the
  # majority share, 0.7 + 3 * sqrt(0.7 * 0.3 / 893) = 0.7460.
  skewed = outcome.Chance(8, 0, 0.7, 893)
  assert skewed.accuracy_above(0.7461) and not skewed.accuracy_above(0.7459)
  message = outcome.failed_message("run", 2.6807, chance, 0.105)
  assert "10.50 % not clearly above the majority label's 10.00 %" in message

def test_joint_intent_and_slot_chance_level_is_the_joint_loss_of_the_uniform_prediction():
  # SNIPS: 8 intents (with UNK), 74 slot tags. The joint loss CE(intent) + mean_t CE(slot_t)
  # of the uniform prediction is ln 8 + ln 74 = 6.3835; a run at 2.2 (intent accuracy 88 %
  # on real SNIPS) is not at chance, although 2.2 > ln 8 = 2.079.
  assert outcome.chance_loss(8, 74) == pytest.approx(math.log(8) + math.log(74))
  assert outcome.classify_outcome(2.2, outcome.Chance(8, 74)) == outcome.OK
  assert outcome.classify_outcome(2.2, outcome.Chance(8)) == outcome.FAILED
  assert outcome.classify_outcome(6.39, outcome.Chance(8, 74)) == outcome.FAILED
  assert outcome.outcome_of_summary({"test_loss": 2.2}, outcome.Chance(8, 74)) == outcome.OK
  assert "ln 8 + ln 74 = 6.3835" in outcome.failed_message("run", 7.0, outcome.Chance(8, 74))


@pytest.fixture(scope="module")
def digits():
  dataset = load_dataset("digits")
  return dataset, get_model("small_cnn", dataset.num_classes, num_filters=4)


def _replay(dataset, model, optimizer, config):
  """Per step t = 1..NUM_STEPS: (train loss of step t, are the params after t finite),
  from the pure train_step alone (no loop, no checkpoints)."""
  state, schedule, train_step, _ = build_run(model, dataset, optimizer, config, 42, 4242)
  train_step = jax.jit(train_step)
  out = {}
  for t in range(1, config.num_steps + 1):
    ids = schedule.batch_ids(t)
    state, metrics = train_step(state, {"images": dataset.train_images[ids],
                                        "labels": dataset.train_labels[ids], "example_ids": ids})
    finite = all(bool(np.all(np.isfinite(np.asarray(leaf))))
                 for leaf in jax.tree.leaves(state.params))
    out[t] = (float(metrics["loss"]), finite)
  return out


@pytest.mark.parametrize("save_steps", [-1, 1])
def test_diverged_run_stops_at_the_first_non_finite_step(tmp_path, digits, save_steps):
  dataset, model = digits
  optimizer = OptimizerConfig(learning_rate=1e6)
  config = TrainConfig(num_steps=NUM_STEPS, batch_size=BATCH, augment=False,
                       save_steps=save_steps, eval_every_steps=5)
  replay = _replay(dataset, model, optimizer, config)
  first_bad_loss = min(t for t, (loss, _) in replay.items() if not math.isfinite(loss))
  assert 1 < first_bad_loss < NUM_STEPS  # the test exercises a real mid-run divergence
  run_dir = str(tmp_path / "run")
  result = train_run(run_dir, model, dataset, optimizer, config, 42, 4242, progress=False)
  summary = json.load(open(run_paths(run_dir)["summary"]))
  assert summary["outcome"] == result.outcome == outcome.DIVERGED
  if save_steps == 1:
    # Saves every step, so the parameters are checked every step: the first step whose
    # update made them non-finite, or whose loss is non-finite, whichever comes first.
    first_bad_params = min(t for t, (_, finite) in replay.items() if not finite)
    expected = min(first_bad_loss, first_bad_params)
  else:
    expected = first_bad_loss
  assert summary["diverged_step"] == result.diverged_step == expected
  loss = replay[expected][0]
  assert (math.isnan(loss) and math.isnan(summary["diverged_loss"])) or (
      summary["diverged_loss"] == pytest.approx(loss, rel=1e-6))
  assert summary["num_steps"] == NUM_STEPS and summary["test_accuracy"] is None
  assert not os.path.exists(run_paths(run_dir)["forget_scores"])
  # No checkpoint at or after the bad step; every one left holds finite parameters.
  checkpoints = RunCheckpoints(run_paths(run_dir)["checkpoints"])
  steps = checkpoints.steps()
  assert steps and max(steps) < expected
  state_like = jax.eval_shape(
      lambda: build_run(model, dataset, optimizer, config, 42, 4242)[0])
  for step in steps:
    state, _, _ = checkpoints.restore(step, state_like, init_forget_stats(dataset.num_train))
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state.params))
  checkpoints.close()
  # Rerunning reports the recorded divergence; it does not resume into it or write anything.
  before = _snapshot(run_dir)
  again = train_run(run_dir, model, dataset, optimizer, config, 42, 4242, progress=False)
  assert again.outcome == outcome.DIVERGED and again.diverged_step == expected
  assert again.steps_trained == 0
  assert _snapshot(run_dir) == before


def test_a_run_ending_at_chance_level_is_recorded_failed(tmp_path, digits):
  dataset, model = digits
  # lr 30 stays finite on digits but ends far above chance loss (measured: ~29 vs ln 10).
  optimizer = OptimizerConfig(learning_rate=30.0)
  config = TrainConfig(num_steps=NUM_STEPS, batch_size=BATCH, augment=False, save_steps=-1,
                       eval_every_steps=-1)
  run_dir = str(tmp_path / "run")
  result = train_run(run_dir, model, dataset, optimizer, config, 42, 4242, progress=False)
  summary = json.load(open(run_paths(run_dir)["summary"]))
  assert math.isfinite(summary["test_loss"]) and summary["test_loss"] >= math.log(10)
  assert summary["outcome"] == result.outcome == outcome.FAILED
  assert "diverged_step" not in summary
  again = train_run(run_dir, model, dataset, optimizer, config, 42, 4242, progress=False)
  assert again.outcome == outcome.FAILED and again.steps_trained == 0


def test_a_normal_run_is_ok(tmp_path, digits):
  dataset, model = digits
  config = TrainConfig(num_steps=NUM_STEPS, batch_size=BATCH, augment=False, save_steps=-1,
                       eval_every_steps=-1)
  result = train_run(str(tmp_path / "run"), model, dataset, OptimizerConfig(), config, 42,
                     4242, progress=False)
  summary = json.load(open(run_paths(str(tmp_path / "run"))["summary"]))
  assert summary["test_loss"] < math.log(10)
  assert summary["outcome"] == result.outcome == outcome.OK
