"""TensorBoard scalars: the event files, read back with TensorBoard's own reader, hold exactly
metrics.csv's numbers, once per step, also after an interrupted run resumes."""

import csv
import json
import os

import numpy as np
import pytest

from datadiet_jax.data.dataset import Dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.loop import TrainConfig, run_paths, train_run
from datadiet_jax.train.metrics_writer import ROW_TAGS, event_files
from datadiet_jax.train.optimizer import OptimizerConfig

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator")

CONFIG = TrainConfig(num_steps=12, batch_size=16, eval_every_steps=3, eval_batch_size=32,
                     save_steps=5)  # evaluations at 0,3,6,9,12; checkpoints at 0,5,10,12
OPTIMIZER = OptimizerConfig(learning_rate=0.05, decay_epochs=(1,), decay_factor=0.5)


@pytest.fixture(scope="module")
def dataset():
  rng = np.random.RandomState(0)

  def split(n):
    labels = (np.arange(n) % 4).astype(np.int32)
    images = np.clip(rng.randint(0, 120, (n, 8, 8, 1)) + 30 * labels[:, None, None, None],
                     0, 255).astype(np.uint8)
    return images, labels

  (xtr, ytr), (xte, yte) = split(96), split(32)
  return Dataset(name="synthetic", train_images=xtr, train_labels=ytr, test_images=xte,
                 test_labels=yte, class_names=("a", "b", "c", "d"),
                 mean=np.array([xtr.mean()], np.float32), std=np.array([xtr.std()], np.float32),
                 example_order="synthetic order")


def _read_events(logdir: str) -> dict:
  """{tag: [(step, value), ...]} as TensorBoard shows it (stale points purged)."""
  accumulator = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def _csv_rows(path: str) -> list[dict]:
  with open(path) as f:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _assert_events_equal_csv(run_dir: str, examples_kept: int) -> dict:
  events = _read_events(os.path.join(run_dir, "tensorboard"))
  rows = _csv_rows(run_paths(run_dir)["metrics"])
  assert sorted(events) == sorted([*ROW_TAGS.values(), "examples_kept"])
  for column, tag in ROW_TAGS.items():
    # f32 in the event file; the step-0 row's train metrics are NaN and are left out.
    expected = [(int(r["step"]), np.float32(r[column])) for r in rows
                if np.isfinite(r[column])]
    assert events[tag] == expected, tag
  assert events["examples_kept"] == [(int(r["step"]), examples_kept) for r in rows]
  return events


def test_event_file_holds_the_metrics_csv_values(tmp_path, dataset):
  model = get_model("small_cnn", 4, num_filters=4)
  ids = np.arange(0, 96, 2)  # a 48-example subset: examples_kept = 48
  run_dir = str(tmp_path / "run")
  train_run(run_dir, model, dataset, OPTIMIZER, CONFIG, 1, 2, example_ids=ids, progress=False)
  events = _assert_events_equal_csv(run_dir, 48)
  assert [s for s, _ in events["test/accuracy"]] == [0, 3, 6, 9, 12]
  assert [s for s, _ in events["train/loss"]] == [3, 6, 9, 12]
  # lr by hand: 0.05 for epoch 1 (3 steps of 16 on 48 examples), then 0.025.
  np.testing.assert_allclose([v for _, v in events["lr"]], [0.05, 0.05, 0.025, 0.025, 0.025],
                             rtol=1e-6)


def test_resumed_run_writes_each_step_once_with_the_recomputed_values(tmp_path, dataset):
  model = get_model("small_cnn", 4, num_filters=4)
  run_dir = str(tmp_path / "run")
  logdir = os.path.join(run_dir, "tensorboard")
  # Interrupted after step 7: rows 0, 3, 6 written, last checkpoint 5 -> row 6 is redone.
  train_run(run_dir, model, dataset, OPTIMIZER, CONFIG, 1, 2, progress=False,
            stop_after_step=7)
  stale_rows = _csv_rows(run_paths(run_dir)["metrics"])
  assert [r["step"] for r in stale_rows] == [0, 3, 6]
  _assert_events_equal_csv(run_dir, 96)
  train_run(run_dir, model, dataset, OPTIMIZER, CONFIG, 1, 2, progress=False)
  assert len(event_files(logdir)) == 1  # the stale file is gone
  events = _assert_events_equal_csv(run_dir, 96)
  assert [s for s, _ in events["test/loss"]] == [0, 3, 6, 9, 12]
  # The uninterrupted run has the same numbers (the resume is exact); elapsed_s is wall time.
  ref_dir = str(tmp_path / "ref")
  train_run(ref_dir, model, dataset, OPTIMIZER, CONFIG, 1, 2, progress=False)
  reference = _read_events(os.path.join(ref_dir, "tensorboard"))
  for tag in set(ROW_TAGS.values()) - {"elapsed_s"}:
    assert events[tag] == reference[tag], tag


def test_a_surviving_stale_event_file_is_hidden_by_the_purge_step(tmp_path, dataset):
  """A reader that still finds an older file (a crash between writing the new file and
  deleting the old, or a copy) drops all of its points: the new file starts with a
  SessionLog.START at step 0 and re-writes the kept rows."""
  model = get_model("small_cnn", 4, num_filters=4)
  run_dir = str(tmp_path / "run")
  logdir = os.path.join(run_dir, "tensorboard")
  train_run(run_dir, model, dataset, OPTIMIZER, CONFIG, 1, 2, progress=False,
            stop_after_step=7)
  (stale,) = event_files(logdir)
  stale_bytes = open(stale, "rb").read()
  train_run(run_dir, model, dataset, OPTIMIZER, CONFIG, 1, 2, progress=False)
  (fresh,) = event_files(logdir)
  # Put the stale file back, named to sort first (older), as TensorBoard reads in name order.
  with open(os.path.join(logdir, "events.out.tfevents.0000000001.old"), "wb") as f:
    f.write(stale_bytes)
  _assert_events_equal_csv(run_dir, 96)


def test_tensorboard_off_writes_no_event_file(tmp_path, dataset):
  model = get_model("small_cnn", 4, num_filters=4)
  config = TrainConfig(**{**CONFIG.__dict__, "tensorboard": False})
  run_dir = str(tmp_path / "run")
  train_run(run_dir, model, dataset, OPTIMIZER, config, 1, 2, progress=False)
  assert os.path.exists(run_paths(run_dir)["metrics"])
  assert not os.path.exists(os.path.join(run_dir, "tensorboard"))


def test_scoring_seconds_go_to_the_sidecar_and_tensorboard(tmp_path, dataset):
  from datadiet_jax.pipelines.score_runs import score_grand_at_init, score_runs
  model = get_model("small_cnn", 4, num_filters=4)
  folder = str(tmp_path)
  score_grand_at_init(folder, dataset, model, [1, 2], batch_size=32, progress=False)
  score_runs(folder, [], [], dataset, model, None, 0, ["input_norm"], progress=False)
  events = _read_events(os.path.join(folder, "scores", "tensorboard"))
  for name, sidecar in (("grand_init", "grand_init/step_0.json"),
                        ("input_norm", "input_norm/step_0.json")):
    with open(os.path.join(folder, "scores", sidecar)) as f:
      seconds = json.load(f)["seconds"]
    assert seconds > 0
    assert events[f"scoring_seconds/{name}"] == [(0, np.float32(seconds))]


def test_cli_tensorboard_flag_is_on_by_default_and_not_part_of_the_config_check(tmp_path,
                                                                                cli_env):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, "-m", "experiments.cifar", "--dataset=digits", "--num_steps=2",
          "--batch_size=32", "--num_filters=2", "--noprogress", "--save_steps=-1",
          f"--workdir={tmp_path}"]
  first = subprocess.run([*args, "--stop_after_step=1", "--tensorboard=false"], cwd=repo,
                         env=cli_env, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  run_dir = os.path.join(str(tmp_path), "runs", "run_0")
  assert not os.path.exists(os.path.join(run_dir, "tensorboard"))
  # Resuming with the default (on) is the same experiment: no config-mismatch refusal.
  second = subprocess.run(args, cwd=repo, env=cli_env, capture_output=True, text=True,
                          timeout=300)
  assert second.returncode == 0, second.stderr[-2000:]
  _assert_events_equal_csv(run_dir, 1442)
