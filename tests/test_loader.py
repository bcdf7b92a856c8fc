"""The grain loader (data/loader.py): batches read ahead in worker processes / threads and
placed on the device ahead of the step, its iterator state in the Orbax checkpoint, and
runs that read this way reaching bit-identical parameters to runs that read in the loop
(also when interrupted and resumed from the checkpointed iterator state)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from datadiet_jax.data.batching import BatchSchedule
from datadiet_jax.data.loader import LoaderConfig, StepFeeder
from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.prune.soft import InfoBatchConfig, InfoBatchPolicy
from datadiet_jax.train.loop import StepBatches, TrainConfig, restore_run_state, train_run
from datadiet_jax.train.optimizer import OptimizerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64


@pytest.fixture(scope="module")
def digits():
  return load_dataset("digits")


def _expected(dataset, schedule, step):
  """The batch of `step` computed directly: the schedule's ids, the dataset's rows."""
  ids = schedule.batch_ids(step)
  return ids, dataset.train_images[ids], dataset.train_labels[ids]


@pytest.mark.parametrize("config", [LoaderConfig(workers=2, device_prefetch=2),
                                    LoaderConfig(threads=2, prefetch=3)],
                         ids=["2 worker processes", "2 threads"])
def test_feeder_yields_each_steps_batch_and_resumes_from_its_iterator_state(digits, config):
  schedule = BatchSchedule(np.arange(digits.num_train), BATCH, seed=7)
  read = StepBatches(digits, slice(None), schedules=(schedule,))
  last = 3 * schedule.steps_per_epoch  # crosses two epoch boundaries (fresh permutations)
  place = jax.device_put if config.device_prefetch else (lambda batch: batch)
  feeder = StepFeeder(read, 1, last, place, config)
  states = {}
  try:
    for step in range(1, last + 1):
      ids, batch = feeder.next(step)
      want_ids, want_images, want_labels = _expected(digits, schedule, step)
      np.testing.assert_array_equal(ids, want_ids)
      np.testing.assert_array_equal(np.asarray(batch["images"]), want_images)
      np.testing.assert_array_equal(np.asarray(batch["labels"]), want_labels)
      np.testing.assert_array_equal(np.asarray(batch["example_ids"]), want_ids)
      if config.device_prefetch:
        assert isinstance(batch["images"], jax.Array)  # placed before the step asked
      states[step] = json.loads(json.dumps(feeder.state()))  # what a checkpoint keeps
  finally:
    feeder.close()
  assert states[5]["settings"] == config.settings() and states[5]["origin"] == 1
  tail = StepFeeder(read, 1, last, place, config, start=last, state=states[last - 1])
  try:
    assert tail.restored
    tail.next(last)
    with pytest.raises(RuntimeError, match="outside its segment"):
      tail.next(last + 1)
  finally:
    tail.close()
  # A new feeder over the same segment, restored from the state after step 17, goes on at 18.
  resumed = StepFeeder(read, 1, last, place, config, start=18, state=states[17])
  try:
    assert resumed.restored
    for step in range(18, 24):
      ids, batch = resumed.next(step)
      np.testing.assert_array_equal(np.asarray(batch["images"]), _expected(digits, schedule,
                                                                          step)[1])
    # It continues the restored state: the state after 23 equals the first feeder's.
    assert resumed.state() == states[23]
  finally:
    resumed.close()
  # Another reader layout cannot take the state: the feeder reads from the step instead.
  other = LoaderConfig(threads=1) if config.workers else LoaderConfig(workers=1)
  fresh = StepFeeder(read, 1, last, place, other, start=18, state=states[17])
  try:
    assert not fresh.restored
    np.testing.assert_array_equal(np.asarray(fresh.next(18)[1]["labels"]),
                                  _expected(digits, schedule, 18)[2])
    with pytest.raises(RuntimeError, match="read step 19 where step 20 was expected"):
      fresh.next(20)
  finally:
    fresh.close()


def test_loader_config_rejects_negative_settings():
  with pytest.raises(ValueError, match="--loader_workers=-1: must be >= 0"):
    LoaderConfig(workers=-1)
  with pytest.raises(ValueError, match="--loader_prefetch=0: must be >= 1"):
    LoaderConfig(prefetch=0)


def test_infobatch_run_read_by_the_loader_resumes_to_the_parameters_of_an_in_loop_run(
    tmp_path, digits, caplog):
  """A dynamic run (InfoBatch: each epoch its own plan and loss weights, so its own loader
  segment) read by 2 grain threads with device prefetch, stopped mid-epoch and resumed,
  ends with the parameters of the same run read in the loop, bit for bit."""
  model = get_model("small_cnn", digits.num_classes, 4, "float32")
  optimizer = OptimizerConfig(learning_rate=0.05, decay_epochs=(3,))
  steps = 3 * (digits.num_train // BATCH)

  def run(folder, loader, stop=None):
    train = TrainConfig(num_steps=steps, batch_size=BATCH, eval_every_steps=-1, save_steps=5,
                        augment=True, track_forgetting=True, loader=loader)
    policy = InfoBatchPolicy(InfoBatchConfig(0.5, 0.75, 3, seed=9), digits.num_train)
    return train_run(str(tmp_path / folder), model, digits, optimizer, train, 1, 2,
                     progress=False, policy=policy, num_epochs=3, stop_after_step=stop), train

  whole, train = run("in_loop", LoaderConfig())
  cut = digits.num_train // BATCH + 7  # mid epoch 1, 2 steps after the checkpoint at 25
  loader = LoaderConfig(threads=2, device_prefetch=2)
  assert run("loader", loader, stop=cut)[0].final_step == cut
  caplog.set_level("INFO", logger="datadiet_jax")
  rest, _ = run("loader", loader)
  assert "loader resumed at step 26 from the checkpointed iterator state" in caplog.text
  assert rest.final_step == whole.final_step
  a = restore_run_state(whole.run_dir, whole.final_step, model, digits, optimizer, train, 1, 2)
  b = restore_run_state(rest.run_dir, rest.final_step, model, digits, optimizer, train, 1, 2)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert whole.test_accuracy == rest.test_accuracy


def test_cli_run_on_records_with_loader_workers_resumes_bit_identically(tmp_path):
  """--dataset=records read by 2 grain worker processes with --device_prefetch=2, stopped at
  step 20 and resumed from the checkpoint's iterator state, equals a run read in the loop:
  the same metrics rows and parameters, bit for bit."""
  env = dict(os.environ, PYTHONPATH=REPO)
  cli = [sys.executable, "-m", "experiments.cifar", "--noprogress"]
  records = str(tmp_path / "records")
  done = subprocess.run([*cli, "--mode=convert", "--dataset=digits", f"--records_out={records}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  train = [*cli, "--mode=train", "--dataset=records", f"--data_dir={records}", "--model=small_cnn",
           "--num_filters=4", "--batch_size=32", "--num_steps=40", "--save_steps=10",
           "--eval_every_steps=20", "--lr=0.05"]
  loader = ["--loader_workers=2", "--device_prefetch=2"]
  runs = {}
  for name, extra in (("in_loop", []), ("stopped", [*loader, "--stop_after_step=20"]),
                      ("resumed", loader)):
    folder = "in_loop" if name == "in_loop" else "loader"
    done = subprocess.run([*train, *extra, f"--workdir={tmp_path / folder}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs[name] = done.stderr
  assert "loader resumed at step 21 from the checkpointed iterator state" in runs["resumed"]
  run_dirs = [tmp_path / folder / "runs" / "run_0" for folder in ("in_loop", "loader")]
  record = json.load(open(run_dirs[1] / "checkpoints" / "20" / "record" / "metadata"))
  assert record["loader"]["settings"] == {"workers": 2, "threads": 0}
  assert record["loader"]["last"] == 40 and "grain" in record["loader"]
  rows = [[line.split(",") for line in open(d / "metrics.csv").read().splitlines()]
          for d in run_dirs]
  header = rows[0][0]
  timed = {header.index(k) for k in header if k.endswith("_s") or k.endswith("seconds")}
  strip = lambda table: [[v for i, v in enumerate(row) if i not in timed] for row in table]
  assert strip(rows[0]) == strip(rows[1]) and len(rows[0]) == 4  # steps 0, 20, 40
  dataset = load_dataset("records", data_dir=records)
  model = get_model("small_cnn", dataset.num_classes, 4, "float32")
  config = TrainConfig(num_steps=40, batch_size=32, eval_every_steps=20, save_steps=10)
  states = [restore_run_state(str(d), 40, model, dataset, OptimizerConfig(learning_rate=0.05),
                              config, 42, 4242)[0] for d in run_dirs]
  moved = restore_run_state(str(run_dirs[0]), 0, model, dataset,
                            OptimizerConfig(learning_rate=0.05), config, 42, 4242)[0]
  assert any(not np.array_equal(x, y) for x, y in zip(
      jax.tree_util.tree_leaves(states[0].params), jax.tree_util.tree_leaves(moved.params)))
  for x, y in zip(jax.tree_util.tree_leaves(states[0]), jax.tree_util.tree_leaves(states[1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
