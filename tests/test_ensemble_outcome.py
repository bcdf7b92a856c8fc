"""Ensemble members diverge and write TensorBoard scalars exactly as lone runs do
(train/ensemble_loop.py vs train/loop.py, on the embedded `digits` data).

The construction: one learning rate at which DIVERGING_SEEDS diverges mid-run (its train
loss becomes non-finite at step 10 of 12) while STABLE_SEEDS stays finite for all NUM_STEPS
(found by a scan of seeds and lrs, see OPTIMIZER; the test asserts both facts on the lone runs, so a
change that moves them fails loudly rather than testing nothing). The ensemble's diverged
member must record the lone run's divergence (outcome, step, loss, checkpoints before the
step only, all finite), and the other member must end where its lone run ends, within the
tolerance of tests/test_ensemble.py.
"""

import dataclasses
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
from datadiet_jax.train.ensemble_loop import train_ensemble
from datadiet_jax.train.forgetting import init_forget_stats
from datadiet_jax.train.loop import TrainConfig, build_run, run_paths, train_run
from datadiet_jax.train.metrics_writer import ROW_TAGS
from datadiet_jax.train.optimizer import OptimizerConfig
from test_ensemble import assert_same_run

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator")

NUM_STEPS = 12
# Scanned (batch 32, no augmentation, 12 steps, data seed 100 + model seed): at lr 220 model
# seeds 1-5 diverge at steps 10-12 and seed 0 stays finite; lr 150 kept all six finite and
# lr 300 made all six diverge (steps 4-10).
OPTIMIZER = OptimizerConfig(learning_rate=220.0)
STABLE_SEEDS, DIVERGING_SEEDS = (0, 100), (5, 105)
CONFIG = TrainConfig(num_steps=NUM_STEPS, batch_size=32, augment=False, eval_every_steps=3,
                     save_steps=4, eval_batch_size=512)


@pytest.fixture(scope="module")
def digits():
  dataset = load_dataset("digits")
  return dataset, get_model("small_cnn", dataset.num_classes, num_filters=4)


@pytest.fixture(scope="module")
def lone(tmp_path_factory, digits):
  """[(run dir, RunResult)] of STABLE_SEEDS and DIVERGING_SEEDS trained alone."""
  dataset, model = digits
  folder = tmp_path_factory.mktemp("alone")
  runs = [(str(folder / f"alone_{m}"), seeds)
          for m, seeds in enumerate([STABLE_SEEDS, DIVERGING_SEEDS])]
  return [(d, train_run(d, model, dataset, OPTIMIZER, CONFIG, *s, progress=False))
          for d, s in runs]


def _events(run_dir: str) -> dict:
  """{tag: [(step, value), ...]} as TensorBoard reads the run's tensorboard/ folder."""
  accumulator = event_accumulator.EventAccumulator(os.path.join(run_dir, "tensorboard"),
                                                   size_guidance={"scalars": 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def _assert_same_events(run_a: str, run_b: str) -> None:
  a, b = _events(run_a), _events(run_b)
  assert sorted(a) == sorted(b) and set(ROW_TAGS.values()) <= set(a)
  for tag in a:
    assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
    if tag != "elapsed_s":  # wall time
      np.testing.assert_allclose([v for _, v in a[tag]], [v for _, v in b[tag]], rtol=1e-4,
                                 atol=1e-5, err_msg=tag)


@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_a_diverging_member_is_recorded_as_its_lone_run(tmp_path, digits, lone, strategy):
  dataset, model = digits
  seeds = [STABLE_SEEDS, DIVERGING_SEEDS]
  dirs = [str(tmp_path / f"member_{m}") for m in range(2)]
  results = train_ensemble(dirs, model, dataset, OPTIMIZER, CONFIG, seeds, progress=False,
                           strategy=strategy)
  alone, lone = [d for d, _ in lone], [r for _, r in lone]
  assert lone[0].outcome != outcome.DIVERGED and lone[1].outcome == outcome.DIVERGED
  assert 1 < lone[1].diverged_step < NUM_STEPS  # a real mid-run divergence

  # The stable member: as its lone run (and untouched by the other's non-finite numbers).
  assert results[0].outcome == lone[0].outcome and results[0].steps_trained == NUM_STEPS
  for step in (0, 4, 8, 12):
    assert_same_run(dirs[0], alone[0], model, dataset, CONFIG, STABLE_SEEDS, step,
                    optimizer=OPTIMIZER)
  _assert_same_events(dirs[0], alone[0])

  # The diverged member: the lone run's record, step for step.
  bad = lone[1].diverged_step
  assert (results[1].outcome, results[1].diverged_step) == (outcome.DIVERGED, bad)
  summary, reference = (json.load(open(run_paths(d)["summary"])) for d in (dirs[1], alone[1]))
  for key in ("outcome", "diverged_step", "num_steps", "final_step", "test_accuracy",
              "test_loss", "model_seed", "data_seed", "num_train_examples", "steps_per_epoch"):
    assert summary[key] == reference[key], key
  for key in ("optimizer_steps", "train_examples"):
    assert summary["accounting"][key] == reference["accounting"][key], key
  loss, ref_loss = summary["diverged_loss"], reference["diverged_loss"]
  assert (math.isnan(loss) and math.isnan(ref_loss)) or loss == pytest.approx(ref_loss,
                                                                              rel=1e-4)
  assert not os.path.exists(run_paths(dirs[1])["forget_scores"])
  checkpoints = RunCheckpoints(run_paths(dirs[1])["checkpoints"])
  steps = checkpoints.steps()
  assert steps == RunCheckpoints(run_paths(alone[1])["checkpoints"]).steps()
  assert steps and max(steps) < bad
  like = jax.eval_shape(lambda: build_run(model, dataset, OPTIMIZER, CONFIG,
                                          *DIVERGING_SEEDS)[0])
  for step in steps:
    state, _, _ = checkpoints.restore(step, like, init_forget_stats(dataset.num_train))
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state.params))
  checkpoints.close()
  with open(run_paths(dirs[1])["metrics"]) as f, open(run_paths(alone[1])["metrics"]) as g:
    assert [r.split(",")[0] for r in f] == [r.split(",")[0] for r in g]  # rows' steps
  _assert_same_events(dirs[1], alone[1])

  # A second call reports both as recorded, training nothing.
  again = train_ensemble(dirs, model, dataset, OPTIMIZER, CONFIG, seeds, progress=False,
                         strategy=strategy)
  assert [r.steps_trained for r in again] == [0, 0]
  assert [r.outcome for r in again] == [lone[0].outcome, outcome.DIVERGED]
  assert again[1].diverged_step == bad


def test_tensorboard_switch_off_writes_no_event_files(tmp_path, digits):
  dataset, model = digits
  config = dataclasses.replace(CONFIG, num_steps=2, tensorboard=False)  # reuses the steps
  dirs = [str(tmp_path / f"member_{m}") for m in range(2)]
  train_ensemble(dirs, model, dataset, OPTIMIZER, config, [STABLE_SEEDS, DIVERGING_SEEDS],
                 progress=False, strategy="map")
  for d in dirs:
    assert os.path.exists(run_paths(d)["summary"])
    assert not os.path.exists(os.path.join(d, "tensorboard"))
