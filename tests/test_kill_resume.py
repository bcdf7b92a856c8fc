"""Kill -9 anywhere: a real CLI training process is SIGKILLed at random moments (one of
them in the middle of writing a checkpoint), the same command is rerun after each kill,
and the finished run must equal an uninterrupted one bit for bit (CPU): parameters,
optimizer state, forgetting statistics, forget_scores.npy, metrics.csv, summary.json."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from datadiet_jax.checkpoint import SAVE_PAUSE_ENV, RunCheckpoints
from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.forgetting import init_forget_stats
from datadiet_jax.train.loop import TrainConfig, build_run, run_paths
from datadiet_jax.train.optimizer import OptimizerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, BATCH, SAVE_EVERY, EVAL_EVERY = 40, 32, 2, 3
ARGS = ["--mode=train", "--dataset=digits", "--model=small_cnn", "--num_filters=4",
        "--augment=false", f"--batch_size={BATCH}", f"--num_steps={NUM_STEPS}",
        f"--save_steps={SAVE_EVERY}", f"--eval_every_steps={EVAL_EVERY}", "--noprogress"]
SAVE_STEPS = list(range(0, NUM_STEPS + 1, SAVE_EVERY))  # hand-derived from ARGS
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's in-progress folder: <step>.orbax-checkpoint-tmp
KILL_SEED = 20261129


def _command(workdir):
  return [sys.executable, "-m", "experiments.cifar", f"--workdir={workdir}", *ARGS]


def _checkpoint_dir(workdir):
  return run_paths(os.path.join(workdir, "runs", "run_0"))["checkpoints"]


def _committed_steps(workdir):
  folder = _checkpoint_dir(workdir)
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(
      folder) else []


def _wait_for(predicate, process, timeout=240.0, poll=0.002):
  """Polls `predicate` until true; False if the process ended first."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if process.poll() is not None:
      return predicate()
    time.sleep(poll)
  raise TimeoutError("the training process made no progress")


def _kill(process):
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)


def _rows(path, drop=("elapsed_s", "score_seconds")):
  with open(path) as f:
    return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _assert_bitwise_equal(a, b, what):
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb, f"{what}: tree structures differ"
  assert la, f"{what}: empty tree"
  for (path, x), (_, y) in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert (x.dtype, x.shape) == (y.dtype, y.shape), (what, jax.tree_util.keystr(path))
    assert x.tobytes() == y.tobytes(), f"{what}{jax.tree_util.keystr(path)} differs"


def test_sigkill_at_random_moments_then_rerun_equals_uninterrupted_run(tmp_path, cli_env):
  reference_dir, killed_dir = str(tmp_path / "reference"), str(tmp_path / "killed")
  # The uninterrupted run trains alongside the killed one (2 processes, 2 cores).
  reference = subprocess.Popen(_command(reference_dir), cwd=REPO, env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  rng = np.random.RandomState(KILL_SEED)
  # Five kills. Four at random moments: once checkpoint k (random) is committed, plus a
  # random 0-40 ms, so the kill lands in a train step, an evaluation, a metrics.csv write,
  # a save or (if k was already committed) start-up. One inside the save of a random
  # `paused_step`: its files written to Orbax's tmp folder, the commit (rename) not yet
  # done (the test hook SAVE_PAUSE_ENV holds it there).
  # (Targets stop 3 saves before the end, so a run never finishes before its kill.)
  targets = sorted(rng.choice(SAVE_STEPS[:-3], size=4, replace=False).tolist())
  paused_step = int(rng.choice([s for s in SAVE_STEPS[1:-3] if s not in targets]))
  plan = [("after", t) for t in targets] + [("in_save", paused_step)]
  plan.sort(key=lambda p: p[1])
  kills = []
  for kind, step in plan:
    env = dict(cli_env)
    if kind == "in_save":
      # A step this process will save (a late earlier kill may have passed the planned
      # one) and whose tmp folder is not a leftover of an earlier kill.
      latest = (_committed_steps(killed_dir) or [-1])[-1]
      step = min(s for s in SAVE_STEPS if s >= step and s > latest and not os.path.exists(
          os.path.join(_checkpoint_dir(killed_dir), f"{s}{TMP_SUFFIX}")))
      env[SAVE_PAUSE_ENV] = f"{step}:120"  # sleeps inside the save of `step`; killed there
    process = subprocess.Popen(_command(killed_dir), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tmp_folder = os.path.join(_checkpoint_dir(killed_dir), f"{step}{TMP_SUFFIX}")
    if kind == "in_save":
      reached = _wait_for(lambda: os.path.isdir(tmp_folder), process)
      time.sleep(0.3)  # files being written or written; the rename is pending
    else:
      reached = _wait_for(lambda: bool(_committed_steps(killed_dir))
                          and _committed_steps(killed_dir)[-1] >= step, process)
      time.sleep(rng.uniform(0.0, 0.04))
    assert reached and process.poll() is None, (
        f"the run ended before the kill at {kind} {step}:\n{process.stderr.read()[-3000:]}")
    _kill(process)
    kills.append((kind, step, _committed_steps(killed_dir)[-1] if _committed_steps(
        killed_dir) else None))
    if kind == "in_save":
      # The kill really hit a half-done save: its tmp folder is there, its step is not.
      assert os.path.isdir(tmp_folder) and step not in _committed_steps(killed_dir), kills
  assert len(kills) == 5

  final = subprocess.run(_command(killed_dir), cwd=REPO, env=cli_env, capture_output=True,
                         text=True, timeout=300)
  assert final.returncode == 0, final.stderr[-3000:]
  assert "Traceback" not in final.stderr, final.stderr[-3000:]
  assert "resuming from checkpoint step" in final.stderr, final.stderr[-3000:]
  ref_out, ref_err = reference.communicate(timeout=300)
  assert reference.returncode == 0, ref_err[-3000:]
  assert "Traceback" not in ref_err, ref_err[-3000:]

  # Same checkpoints, none left half-written (the paused save's tmp folder was replaced).
  for workdir in (reference_dir, killed_dir):
    assert _committed_steps(workdir) == SAVE_STEPS, (workdir, kills)
    assert not [d for d in os.listdir(_checkpoint_dir(workdir)) if TMP_SUFFIX in d], kills
  assert not os.path.exists(_checkpoint_dir(killed_dir) + "_unreadable"), kills

  # Final train state and forgetting statistics, restored from both workdirs, bitwise.
  dataset = load_dataset("digits")
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  config = TrainConfig(num_steps=NUM_STEPS, batch_size=BATCH, augment=False)
  state_like, _, _, _ = build_run(model, dataset, OptimizerConfig(), config, 42, 4242)
  forget_like = init_forget_stats(dataset.num_train)
  restored = {}
  for name, workdir in (("reference", reference_dir), ("killed", killed_dir)):
    checkpoints = RunCheckpoints(_checkpoint_dir(workdir))
    restored[name] = checkpoints.restore(NUM_STEPS, state_like, forget_like)
    checkpoints.close()
  (a_state, a_forget, a_record), (b_state, b_forget, b_record) = (restored["reference"],
                                                                  restored["killed"])
  assert int(b_state.step) == NUM_STEPS
  for field in ("params", "opt_state", "key", "step"):
    _assert_bitwise_equal(getattr(b_state, field), getattr(a_state, field), field)
  _assert_bitwise_equal(b_forget, a_forget, "forgetting statistics")
  assert b_record["train_accum"] == a_record["train_accum"]
  # Training happened and forgetting was tracked (the comparison is not vacuous).
  assert not np.array_equal(jax.tree_util.tree_leaves(a_state.params)[0],
                            jax.tree_util.tree_leaves(state_like.params)[0])
  assert int(np.sum(np.asarray(a_forget.ever_correct))) > 0

  a_paths = run_paths(os.path.join(reference_dir, "runs", "run_0"))
  b_paths = run_paths(os.path.join(killed_dir, "runs", "run_0"))
  with open(a_paths["forget_scores"], "rb") as fa, open(b_paths["forget_scores"], "rb") as fb:
    assert fa.read() == fb.read()
  a_rows, b_rows = _rows(a_paths["metrics"]), _rows(b_paths["metrics"])
  assert [int(r["step"]) for r in a_rows] == sorted(
      set(range(0, NUM_STEPS + 1, EVAL_EVERY)) | {NUM_STEPS})
  assert b_rows == a_rows  # every column but wall time, as written (exact text)
  with open(a_paths["summary"]) as fa, open(b_paths["summary"]) as fb:
    a_summary, b_summary = json.load(fa), json.load(fb)
  for summary in (a_summary, b_summary):
    summary.pop("train_seconds")
    # Wall seconds of the compute accounting differ between runs; its counts must not.
    summary["accounting"] = {k: v for k, v in summary["accounting"].items()
                             if not k.endswith("_seconds")}
  assert b_summary["accounting"]["optimizer_steps"] == NUM_STEPS
  assert b_summary == a_summary
  print(f"kills (kind, step, newest committed checkpoint): {kills}")
