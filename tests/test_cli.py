"""The experiment CLI (`python -m experiments.cifar`) end to end, as a user runs it:
train on digits, rerun (skip), config mismatch, bad inputs, score mode."""

import io
import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import snapshot_files
from datadiet_jax.checkpoint import RunCheckpoints
from datadiet_jax.data.batching import BatchSchedule
from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.forgetting import init_forget_stats
from datadiet_jax.train.loop import TrainConfig, build_run, run_paths
from datadiet_jax.train.optimizer import OptimizerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, BATCH = 30, 32
TRAIN_ARGS = ["--dataset=digits", f"--num_steps={NUM_STEPS}", f"--batch_size={BATCH}",
              "--model=small_cnn", "--num_filters=4", "--augment=false", "--noprogress"]
DIGITS_TRAIN, DIGITS_TEST = 1442, 355  # the embedded digits split (every 5th per class = test)


def _cli(args, env, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.cifar", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _error_line(stderr, marker="error:"):
  """The single stderr line holding `marker` (asserts there is exactly one)."""
  lines = [line for line in stderr.splitlines() if marker in line]
  assert len(lines) == 1, f"expected one {marker!r} line in stderr:\n{stderr[-3000:]}"
  assert "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


_snapshot = snapshot_files


@pytest.fixture(scope="module")
def env(cli_env):
  return cli_env


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
  """A workdir trained once by `--mode=train` (the digits tiny budget)."""
  workdir = tmp_path_factory.mktemp("cli") / "work"
  result = _cli(["--mode=train", f"--workdir={workdir}", *TRAIN_ARGS], env)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


@pytest.fixture(scope="module")
def reference(trained):
  """The digits dataset, model and the step-30 checkpoint restored in this process."""
  workdir, _ = trained
  dataset = load_dataset("digits", sort_by_class=True)
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  config = TrainConfig(num_steps=NUM_STEPS, batch_size=BATCH, augment=False)
  # Shapes only (no compilation): the template the checkpoint is restored into.
  state_like = jax.eval_shape(
      lambda: build_run(model, dataset, OptimizerConfig(), config, 42, 4242)[0])
  checkpoints = RunCheckpoints(run_paths(str(workdir / "runs" / "run_0"))["checkpoints"])
  state, forget, _ = checkpoints.restore(NUM_STEPS, state_like,
                                         init_forget_stats(dataset.num_train))
  checkpoints.close()
  apply = jax.jit(lambda params, x: model.apply({"params": params}, x, train=False))

  def logits(images):
    x = (images.astype(np.float32) - dataset.mean) / dataset.std  # independent normalize
    return np.asarray(apply(state.params, x), np.float64)

  return dataset, state, forget, logits


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ------------------------------------------------------------------------------ train


def test_train_writes_every_artifact(trained, reference):
  workdir, _ = trained
  dataset, state, forget, logits = reference
  assert (dataset.num_train, dataset.num_test) == (DIGITS_TRAIN, DIGITS_TEST)
  for name in ("flags.txt", "run_info.json", "config.json", "train.log"):
    assert (workdir / name).is_file(), name
  flags_text = (workdir / "flags.txt").read_text()
  for flag in (f"--num_steps={NUM_STEPS}", f"--batch_size={BATCH}", "--model=small_cnn",
               "--num_filters=4", "--noaugment", "--lr=0.1", f"--workdir={workdir}"):
    assert flag in flags_text.splitlines(), flag
  info = json.loads((workdir / "run_info.json").read_text())
  assert {"versions", "git_commit", "devices", "argv"} <= set(info)
  assert info["versions"]["jax"] == jax.__version__
  assert info["git_commit"] is None or len(info["git_commit"].split("-")[0]) == 40
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"] == "small_cnn" and config["num_filters"] == 4
  assert config["num_train"] == DIGITS_TRAIN
  assert config["train"]["num_steps"] == NUM_STEPS and config["optimizer"]["learning_rate"] == 0.1
  assert "run 0" in (workdir / "train.log").read_text()

  run = workdir / "runs" / "run_0"
  summary = json.loads((run / "summary.json").read_text())
  assert summary["final_step"] == NUM_STEPS
  assert summary["num_train_examples"] == DIGITS_TRAIN
  assert summary["steps_per_epoch"] == DIGITS_TRAIN // BATCH == 45
  assert (summary["model_seed"], summary["data_seed"]) == (42, 4242)
  # Default schedules (eval/save once per epoch = 45 steps > 30): steps 0 and 30 only.
  assert RunCheckpoints(str(run / "checkpoints")).steps() == [0, NUM_STEPS]
  rows = (run / "metrics.csv").read_text().splitlines()
  assert rows[0].split(",")[:2] == ["step", "epoch"]
  assert [r.split(",")[0] for r in rows[1:]] == ["0", str(NUM_STEPS)]

  # The summary's test accuracy / loss equal an independent evaluation of the checkpoint.
  z = logits(dataset.test_images)
  accuracy = float(np.mean(z.argmax(-1) == dataset.test_labels))
  loss = float(-np.mean(_log_softmax(z)[np.arange(len(z)), dataset.test_labels]))
  assert summary["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
  assert summary["test_loss"] == pytest.approx(loss, rel=1e-5)
  assert accuracy > 0.2, f"30 steps should beat chance (0.1) on digits, got {accuracy:.3f}"
  print(f"digits, 30 steps: test accuracy {accuracy:.4f}, loss {loss:.4f}")

  # forget_scores.npy: 30 steps x 32 < one epoch, so every example is visited at most once:
  # never-visited or never-correct examples are inf, the rest 0 (a first visit cannot be
  # a forgetting event).
  scores = np.load(run / "forget_scores.npy")
  assert scores.shape == (DIGITS_TRAIN,) and scores.dtype == np.float32
  schedule = BatchSchedule(np.arange(DIGITS_TRAIN, dtype=np.int32), BATCH, 4242)
  visited = np.zeros(DIGITS_TRAIN, bool)
  visited[np.concatenate([schedule.batch_ids(t) for t in range(1, NUM_STEPS + 1)])] = True
  assert visited.sum() == NUM_STEPS * BATCH
  assert np.all(np.isinf(scores[~visited]))
  assert set(np.unique(scores[np.isfinite(scores)]).tolist()) <= {0.0}
  np.testing.assert_array_equal(np.isfinite(scores), np.asarray(forget.ever_correct))
  assert 0 < np.isfinite(scores).sum() < visited.sum()


def test_rerun_skips_the_finished_run(trained, env):
  workdir, _ = trained
  run = workdir / "runs" / "run_0"
  before = _snapshot(run)
  again = _cli(["--mode=train", f"--workdir={workdir}", *TRAIN_ARGS], env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already finished" in again.stderr and "skipping" in again.stderr
  assert _snapshot(run) == before  # nothing retrained or rewritten


def test_different_lr_is_a_config_mismatch_and_changes_nothing(trained, env):
  workdir, _ = trained
  before = _snapshot(workdir)
  assert "flags.txt" in before and "train.log" in before
  mismatch = _cli(["--mode=train", f"--workdir={workdir}", *TRAIN_ARGS, "--lr=0.2"], env)
  assert mismatch.returncode == 2, mismatch.stderr[-3000:]
  line = _error_line(mismatch.stderr)
  assert line.startswith("error:")
  assert "other settings" in line and "optimizer" in line and str(workdir) in line, line
  assert "--workdir" in line  # says what to do
  after = _snapshot(workdir)
  changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
  assert not changed, f"a failed command modified {changed}"


def test_a_different_conv_impl_is_a_config_mismatch(trained, env):
  """--conv_impl changes the bits of training (not the parameters): a workdir trained with
  XLA's weight gradient refuses to resume with the matmul one, and changes nothing."""
  workdir, _ = trained
  before = _snapshot(workdir)
  mismatch = _cli(["--mode=train", f"--workdir={workdir}", *TRAIN_ARGS,
                   "--conv_impl=matmul"], env)
  assert mismatch.returncode == 2, mismatch.stderr[-3000:]
  line = _error_line(mismatch.stderr)
  assert "conv_impl" in line and str(workdir) in line, line
  after = _snapshot(workdir)
  assert not sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


# ------------------------------------------------------------------------------ score


def test_score_mode_writes_el2n_equal_to_an_independent_computation(trained, reference, env):
  workdir, _ = trained
  dataset, _, _, logits = reference
  scored = _cli(["--mode=score", f"--workdir={workdir}", *TRAIN_ARGS, "--scores=el2n"], env)
  assert scored.returncode == 0, scored.stderr[-3000:]
  folder = workdir / "scores" / "el2n"
  scores = np.load(folder / f"step_{NUM_STEPS}.npy")
  sidecar = json.loads((folder / f"step_{NUM_STEPS}.json").read_text())
  assert scores.shape == (DIGITS_TRAIN,) == (dataset.num_train,)
  assert sidecar["score"] == "el2n" and sidecar["step"] == NUM_STEPS
  assert sidecar["num_examples"] == DIGITS_TRAIN and sidecar["num_runs"] == 1
  assert sidecar["seeds"] == [[42, 4242]]
  z = logits(dataset.train_images)
  probs = np.exp(_log_softmax(z))
  onehot = np.eye(dataset.num_classes)[dataset.train_labels]
  expected = np.linalg.norm(probs - onehot, axis=-1)
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
  assert scores.std() > 1e-3  # not a constant


def test_score_step_without_checkpoint_lists_available_steps(trained, env):
  workdir, _ = trained
  bad = _cli(["--mode=score", f"--workdir={workdir}", *TRAIN_ARGS, "--scores=el2n",
              "--score_step=7"], env)
  assert bad.returncode == 2, bad.stderr[-3000:]
  line = _error_line(bad.stderr)
  assert "no checkpoint for step 7" in line and f"available: [0, {NUM_STEPS}]" in line, line
  assert not (workdir / "scores" / "el2n" / "step_7.npy").exists()


# ------------------------------------------------------------------------- bad inputs


def _png(seed, fmt="PNG"):
  pixels = np.random.RandomState(seed).randint(0, 256, (6, 6, 3)).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, fmt)
  return buffer.getvalue()


def _corrupt_tar(path):
  files = {"train/a/0.png": _png(0), "train/a/1.jpg": _png(1, "JPEG"),
           "train/b/0.png": _png(2), "train/b/bad.jpg": b"this is not a JPEG \x00\xff" * 10,
           "test/a/0.png": _png(3), "test/b/0.png": _png(4)}
  with tarfile.open(path, "w:gz") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(f"tiny/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def test_bad_inputs_fail_with_one_clear_line_and_write_nothing(tmp_path, env):
  tar = _corrupt_tar(tmp_path / "tiny.tar.gz")
  base = ["--mode=train", "--num_steps=5", "--batch_size=2", "--model=small_cnn",
          "--num_filters=4", "--augment=false", "--noprogress"]
  cases = {
      # name: (extra args, exit code (None: any non-zero), what the message must contain)
      "missing_data_dir": (["--dataset=image_folder", "--data_dir=/nonexistent"], 2,
                           ["error:", "/nonexistent not found", "--data_dir"]),
      "unknown_dataset": (["--dataset=no_such_data"], None,
                          ["--dataset=no_such_data", "should be one of", "digits"]),
      "unknown_model": (["--dataset=digits", "--model=no_such_net"], None,
                        ["--model=no_such_net", "should be one of", "small_cnn"]),
      "corrupt_jpeg": (["--dataset=image_folder", f"--data_dir={tar}",
                        f"--cache_dir={tmp_path / 'cache'}"], 2,
                       ["error:", "cannot decode image tiny/train/b/bad.jpg", tar,
                        "replace or remove that file"]),
      "zero_batch": (["--dataset=digits", "--batch_size=0"], None,
                     ["--batch_size=0", "positive"]),
      "batch_over_dataset": (["--dataset=digits", "--batch_size=5000"], 2,
                             ["error:", "--batch_size=5000", "1442 training examples"]),
  }
  procs = {}
  for name, (extra, _, _) in cases.items():  # all at once: most fail within seconds
    workdir = tmp_path / f"work_{name}"
    procs[name] = (workdir, subprocess.Popen(
        [sys.executable, "-m", "experiments.cifar", *base, f"--workdir={workdir}", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = {name: (workdir, proc.communicate(timeout=300), proc.returncode)
             for name, (workdir, proc) in procs.items()}
  for name, (workdir, (_, stderr), code) in outputs.items():
    _, expected_code, needles = cases[name]
    assert code != 0, f"{name}: exit 0\n{stderr[-2000:]}"
    if expected_code is not None:
      assert code == expected_code, f"{name}: exit {code}\n{stderr[-2000:]}"
    line = _error_line(stderr, needles[0])
    for needle in needles:
      assert needle in line, f"{name}: {needle!r} not in {line!r}"
    # Nothing half-written: no runs/, no config.json, no flags.txt (the workdir is only
    # written once the data, model and config are known to be good).
    leftovers = _snapshot(workdir) if workdir.exists() else {}
    assert not leftovers, f"{name}: left {sorted(leftovers)} in the workdir"
  assert not (tmp_path / "cache").exists() or not any(
      p.name == "meta.json" for p in (tmp_path / "cache").rglob("*")), "cached a failed load"
