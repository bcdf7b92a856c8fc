"""Sweeps split over processes: the partition, the per-run lock (stale-lock recovery after a
crash or kill -9), and two concurrent CLI workers on one workdir whose union equals a
single-process sweep - figure1 runs, merged table, and example-sharded scores."""

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.shards import fingerprint, merge_score_shards, save_score_shard
from datadiet_jax.sweep import lock
from datadiet_jax.sweep.partition import Worker, example_shard
from datadiet_jax.sweep.runner import Task, run_all, run_share
from conftest import TEST_XLA_FLAGS, assert_same_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- partition -------------------------------------------------------------------------

def test_partition_is_a_deterministic_round_robin_and_shards_tile_the_examples():
  items = [f"run {i}" for i in range(7)]
  shares = [Worker(3, i).share(items) for i in range(3)]
  assert shares == [["run 0", "run 3", "run 6"], ["run 1", "run 4"], ["run 2", "run 5"]]
  assert Worker().share(items) == items
  for n, k in ((1442, 2), (10, 3), (5, 5), (3, 4)):
    edges = [example_shard(n, k, i) for i in range(k)]
    assert edges[0][0] == 0 and edges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
    assert max(b - a for a, b in edges) - min(b - a for a, b in edges) <= 1
  assert example_shard(10, 3, 1) == (3, 6)
  with pytest.raises(ValueError, match=r"--worker_index=2 must lie in \[0, --num_workers=2\)"):
    Worker(2, 2)
  with pytest.raises(ValueError, match=r"--num_workers must be >= 1"):
    Worker(0, 0)


# --- locks -----------------------------------------------------------------------------

def _dead_pid() -> int:
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def _write_lock(folder, pid, host=None, age_s=0.0):
  os.makedirs(folder, exist_ok=True)
  path = lock.lock_path(folder)
  with open(path, "w") as f:
    json.dump({"pid": pid, "host": host or socket.gethostname(),
               "start_time": time.time() - age_s, "token": "old", "label": "crashed"}, f)
  os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_a_lock_of_a_dead_pid_is_recovered_and_a_live_one_is_not(tmp_path):
  folder = str(tmp_path / "run")
  dead = _dead_pid()
  _write_lock(folder, dead)
  held = lock.acquire(folder, "me")
  history = lock.read_history(folder)
  assert [h["event"] for h in history] == ["stale lock removed", "acquired"]
  assert history[0]["previous"]["pid"] == dead
  # A second acquirer while we hold it: refused, naming us.
  with pytest.raises(lock.RunLockedError, match=rf"locked by pid {os.getpid()} on "):
    lock.acquire(folder, "other")
  held.release()
  assert lock.holder_of(folder) is None
  assert lock.read_history(folder)[-1]["event"] == "released"

  # Another host's lock: live while its heartbeat is fresh, stale after stale_after_s.
  _write_lock(folder, 1, host="elsewhere", age_s=10)
  with pytest.raises(lock.RunLockedError, match="on elsewhere"):
    lock.acquire(folder, stale_after_s=300)
  _write_lock(folder, 1, host="elsewhere", age_s=400)
  lock.acquire(folder, stale_after_s=300).release()
  # An empty lock file: maybe one being written right now, so live while fresh; left by a
  # crash between create and write once older than 10 s.
  open(lock.lock_path(folder), "w").close()
  with pytest.raises(lock.RunLockedError):
    lock.acquire(folder)
  os.utime(lock.lock_path(folder), (time.time() - 60, time.time() - 60))
  lock.acquire(folder).release()


def test_the_heartbeat_keeps_a_held_lock_fresh(tmp_path):
  folder = str(tmp_path / "run")
  held = lock.acquire(folder, heartbeat_s=0.05)
  path = lock.lock_path(folder)
  os.utime(path, (time.time() - 1000, time.time() - 1000))
  time.sleep(0.5)
  assert time.time() - os.stat(path).st_mtime < 5
  held.release()


def test_kill_9_of_a_holder_does_not_block_the_run(tmp_path):
  folder = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import time
          from datadiet_jax.sweep import lock
          lock.acquire({folder!r}, "holder")
          print("locked", flush=True)
          time.sleep(600)""")],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(lock.RunLockedError, match=f"pid {holder.pid} .*holder"):
      lock.acquire(folder)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  lock.acquire(folder, "after the crash").release()
  events = [(h["event"], h["label"]) for h in lock.read_history(folder)]
  assert events == [("acquired", "holder"), ("stale lock removed", "after the crash"),
                    ("acquired", "after the crash"), ("released", "after the crash")]


def test_runner_skips_held_tasks_in_a_share_and_waits_for_them_in_run_all(tmp_path):
  done, order = set(), []

  def task(name):
    folder = str(tmp_path / name)

    def run():
      with lock.hold(folder, "runner"):
        order.append(name)
        done.add(name)
    return Task(name, lambda: name in done, run)

  tasks = [task(f"t{i}") for i in range(4)]
  _write_lock(str(tmp_path / "t2"), os.getppid(), host=socket.gethostname())  # live holder
  assert run_share(tasks, Worker(2, 0)) == ["t2"]
  assert order == ["t0"]
  # run_all: own share, then the others; t2 is waited for until its holder "dies" (its
  # lock goes stale: here, its heartbeat stops), then taken over.
  stop_heartbeat = threading.Timer(
      0.3, lambda: os.utime(lock.lock_path(str(tmp_path / "t2")), (0, 0)))
  stop_heartbeat.start()
  run_all(tasks, Worker(2, 0), poll_s=0.01)
  assert order == ["t0", "t1", "t3", "t2"]


# --- score shards ----------------------------------------------------------------------

def test_merging_refuses_shards_of_other_checkpoints(tmp_path):
  workdir = str(tmp_path)
  values = np.arange(10, dtype=np.float32)
  ckpt_a, ckpt_b = fingerprint([np.zeros(3)]), fingerprint([np.ones(3)])
  assert ckpt_a != ckpt_b and fingerprint([np.zeros(3)]) == ckpt_a
  for i, ckpt in ((0, ckpt_a), (1, ckpt_b)):
    start, stop = example_shard(10, 2, i)
    save_score_shard(workdir, "el2n", 5, i, 2, start, stop, 10, values[start:stop],
                     settings={"checkpoints": ckpt, "seeds": [[1, 2]]})
  with pytest.raises(ScoreError, match=r"made with different checkpoints \(shard 0: "
                                       rf"checkpoints='{ckpt_a}', shard 1: "):
    merge_score_shards(workdir, "el2n", 5)
  assert not os.path.exists(os.path.join(workdir, "scores", "el2n", "step_5.npy"))
  start, stop = example_shard(10, 2, 1)
  save_score_shard(workdir, "el2n", 5, 1, 2, start, stop, 10, values[start:stop],
                   settings={"checkpoints": ckpt_a, "seeds": [[1, 2]]})
  path = merge_score_shards(workdir, "el2n", 5)
  np.testing.assert_array_equal(np.load(path), values)
  sidecar = json.load(open(path[:-4] + ".json"))
  assert sidecar["merged_from_shards"] == 2 and sidecar["checkpoints"] == ckpt_a


# --- two concurrent CLI workers ----------------------------------------------------------

FIGURE1 = ["--mode=figure1", "--dataset=digits", "--num_steps=20", "--batch_size=32",
           "--score_runs=2", "--score_step=10", "--num_seeds=1", "--model=small_cnn",
           "--num_filters=4", "--augment=false", "--eval_every_steps=-1", "--save_steps=-1",
           "--noprogress", "--methods=random,el2n:hardest", "--prune_fractions=0.5",
           "--figure1_scores=el2n,input_norm"]
# The score runs' own settings (as figure1 trains them), for --mode=score on their folder.
SCORE = ["--mode=score", "--dataset=digits", "--num_steps=10", "--batch_size=32",
         "--model=small_cnn", "--num_filters=4", "--augment=false", "--eval_every_steps=-1",
         "--save_steps=-1", "--early_save_steps=10", "--early_step=10", "--noprogress",
         "--num_runs=2", "--score_step=10", "--scores=el2n,forgetting",
         "--score_batch_size=64"]


def _cli(args, env):
  return subprocess.Popen([sys.executable, "-m", "experiments.cifar", *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs):
  outs = [p.communicate(timeout=900)[0] for p in procs]
  return [(p.returncode, out) for p, out in zip(procs, outs)]


def _runs_csv(workdir):
  with open(os.path.join(workdir, "results", "runs.csv")) as f:
    return sorted((r["key"], r["prune_fraction"], r["seed"], r["test_accuracy"],
                   r["test_loss"]) for r in csv.DictReader(f))


def _two_workers_then_report(args, report_flag, tmp_path):
  """Runs `args` as 2 concurrent workers on <tmp>/parallel beside one process on
  <tmp>/serial, then `report_flag` on the parallel workdir; returns (env, parallel, serial,
  the report's output)."""
  env = dict(os.environ, PYTHONPATH=REPO)
  env["XLA_FLAGS"] = TEST_XLA_FLAGS  # one CPU device per process
  parallel, serial = str(tmp_path / "parallel"), str(tmp_path / "serial")
  procs = [_cli([*args, f"--workdir={parallel}", "--num_workers=2", f"--worker_index={i}"],
                env) for i in range(2)]
  procs.append(_cli([*args, f"--workdir={serial}"], env))
  for code, out in _finish(procs):
    assert code == 0, out[-3000:]
  (code, out), = _finish([_cli([*args, f"--workdir={parallel}", report_flag], env)])
  assert code == 0, out[-3000:]
  return env, parallel, serial, out


def test_two_concurrent_workers_equal_one_process(tmp_path):
  env, parallel, serial, out = _two_workers_then_report(FIGURE1, "--figure1_report_only",
                                                        tmp_path)
  assert "Not finished yet" not in out

  # The union of runs is the serial sweep's, with the same numbers.
  assert _runs_csv(parallel) == _runs_csv(serial)
  assert len(_runs_csv(parallel)) == 3  # full, random, el2n-hardest
  # The score stage ran in 2 example shards, one per worker, merged into one file that
  # equals the serial one (to float32 rounding, see conftest.assert_same_scores).
  for name, step in (("el2n", 10), ("input_norm", 0)):
    assert_same_scores(np.load(f"{parallel}/scores/{name}/step_{step}.npy"),
                        np.load(f"{serial}/scores/{name}/step_{step}.npy"))
    assert json.load(open(f"{parallel}/scores/{name}/step_{step}.json"))[
        "merged_from_shards"] == 2
    assert "merged_from_shards" not in json.load(open(f"{serial}/scores/{name}/step_{step}.json"))
  shard_owners = {j: {h["label"] for h in lock.read_history(
      f"{parallel}/score_shards/{j}_of_2") if h["event"] == "acquired"} for j in range(2)}
  assert all(len(labels) >= 1 for labels in shard_owners.values()), shard_owners
  # No run trained twice: per run, the lock records' trained steps add up to its length,
  # and the lock was never held by two processes at once. The final runs are trained by
  # their owners (round robin over full, random, el2n-hardest).
  runs = {"score_runs/runs/run_0": (10, None), "score_runs/runs/run_1": (10, None),
          "full/seed_0": (20, "worker 0/2"), "subsets/random/prune_50/seed_0": (20, "worker 1/2"),
          "subsets/el2n-hardest/prune_50/seed_0": (20, "worker 0/2")}
  for run, (num_steps, owner) in runs.items():
    history = lock.read_history(os.path.join(parallel, run))
    released = [h for h in history if h["event"] == "released"]
    assert sum(h["steps_trained"] for h in released) == num_steps, (run, history)
    events = [h["event"] for h in history if h["event"] in ("acquired", "released")]
    assert events == ["acquired", "released"] * (len(events) // 2), (run, history)
    if owner:
      assert {h["label"] for h in released if h["steps_trained"]} == {owner}, (run, history)

  # Example-sharded scoring of the score runs by 2 concurrent workers: the merged file
  # equals the single-process score file (to float32 rounding).
  folder = f"{parallel}/score_runs"
  procs = [_cli([*SCORE, f"--workdir={folder}", "--num_workers=2", f"--worker_index={i}"], env)
           for i in range(2)]
  for code, out in _finish(procs):
    assert code == 0, out[-3000:]
  for suffix in (".npy", ".std.npy", ".runs.npy"):
    assert_same_scores(np.load(f"{folder}/scores/el2n/step_10{suffix}"),
                        np.load(f"{parallel}/scores/el2n/step_10{suffix}"))
  sidecar = json.load(open(f"{folder}/scores/el2n/step_10.json"))
  assert sidecar["merged_from_shards"] == 2 and sidecar["seeds"] == [[42, 4242],
                                                                      [424284, 428484]]
  forgetting = np.load(f"{folder}/scores/forgetting/step_10.npy")
  assert forgetting.shape == (1442,)

  # A shard made with other settings is refused, by the last worker and by merge_scores.
  for suffix in (".npy", ".std.npy", ".runs.npy", ".json", ".shard_1of2.json",
                 ".shard_1of2.npz"):
    os.remove(f"{folder}/scores/el2n/step_10{suffix}")
  other = [a if a != "--score_batch_size=64" else "--score_batch_size=32" for a in SCORE]
  (code, out), = _finish([_cli([*other, f"--workdir={folder}", "--num_workers=2",
                                "--worker_index=1", "--scores=el2n"], env)])
  assert code == 2, out[-3000:]
  message = ("error: score shards of el2n@10 were made with different score_batch_size "
             "(shard 0: score_batch_size=64, shard 1: score_batch_size=32)")
  assert message in out
  (code, out), = _finish([_cli([*SCORE, f"--workdir={folder}", "--mode=merge_scores",
                                "--scores=el2n"], env)])
  assert code == 2 and message in out, out[-3000:]
  assert not os.path.exists(f"{folder}/scores/el2n/step_10.npy")


def test_pool_selection_seeds_split_over_two_workers_equal_one_process(tmp_path):
  from datadiet_jax.data.sources import load_dataset
  from datadiet_jax.models import get_model
  from datadiet_jax.train.loop import TrainConfig
  from datadiet_jax.train.optimizer import OptimizerConfig
  from datadiet_jax.pipelines.pool_selection import (PoolSelectionConfig, run_pool_selection,
                                                     split_base_and_pool)
  dataset = load_dataset("digits")
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  train = TrainConfig(num_steps=6, batch_size=32, eval_every_steps=-1, save_steps=-1,
                      augment=False, track_forgetting=False)
  base, pool = split_base_and_pool(dataset.train_labels, 10, 200, 0)
  seeds_of = lambda m: (42 + m * 424242, 4242 + m * 424242)
  args = (dataset, model, OptimizerConfig(), train, base, pool,
          PoolSelectionConfig(20, "entropy", num_seeds=2), seeds_of)

  def rows(out):
    return sorted((r["key"], r["seed"], r["test_accuracy"], r["test_loss"],
                   r["added_mean_score"]) for r in out["rows"])

  serial = run_pool_selection(str(tmp_path / "serial"), *args, progress=False)
  split = str(tmp_path / "split")
  # Worker 1 alone (worker 0 not started yet, as in a job array with a concurrency limit):
  # it trains both base runs (its own, then the one no live process holds), scores both
  # example shards of each seed's pool, and trains its own seed's added runs.
  first = run_pool_selection(split, *args, progress=False, worker=Worker(2, 1))
  assert first["trainings_run"] == 4 and first["scores_computed"] == 4
  assert sorted(first["missing"]) == ["base + random-20, seed 0",
                                      "base + top-20 entropy, seed 0"]
  for m in range(2):
    folder = f"{split}/pool/base/seed_{m}"
    np.testing.assert_array_equal(np.load(f"{folder}/pool_scores_entropy.npy"),
                                  serial["pool_scores"][m])
    sidecar = json.load(open(f"{folder}/pool_scores_entropy.json"))
    assert sidecar["merged_from_shards"] == 2 and sidecar["pool_size"] == 200
    for j in range(2):  # shard j of 2 is score batch j of 128 pool positions
      record = json.load(open(f"{folder}/pool_scores_entropy.shard_{j}of2.json"))
      assert (record["start"], record["stop"]) == [(0, 128), (128, 200)][j]
      assert [h["label"] for h in lock.read_history(f"{folder}/pool_shards/{j}_of_2")
              if h["event"] == "acquired"] == ["worker 1/2"]
  second = run_pool_selection(split, *args, progress=False, worker=Worker(2, 0))
  assert second["trainings_run"] == 2 and second["scores_computed"] == 0
  assert second["missing"] == []
  assert rows(second) == rows(serial)  # worker 0's report includes worker 1's seed

  # Shards scored from other checkpoints are refused when merged, naming the setting.
  from datadiet_jax.scores.errors import ScoreError
  from datadiet_jax.scores.shards import merge_shards
  folder = f"{split}/pool/base/seed_0"
  os.remove(f"{folder}/pool_scores_entropy.npy")
  os.replace(f"{split}/pool/base/seed_1/pool_scores_entropy.shard_1of2.json",
             f"{folder}/pool_scores_entropy.shard_1of2.json")  # seed 1's model, seed 0's file
  os.replace(f"{split}/pool/base/seed_1/pool_scores_entropy.shard_1of2.npz",
             f"{folder}/pool_scores_entropy.shard_1of2.npz")
  with pytest.raises(ScoreError, match="made with different data_seed, model_fingerprint, "
                     "model_seed"):
    merge_shards(f"{folder}/pool_scores_entropy", "pool scores", 2)
  assert not os.path.exists(f"{folder}/pool_scores_entropy.npy")


def test_grand_at_init_in_two_example_shards_equals_one_process(tmp_path):
  from datadiet_jax.data.sources import load_dataset
  from datadiet_jax.models import get_model
  from datadiet_jax.pipelines.score_runs import score_grand_at_init
  dataset = load_dataset("digits")
  dataset = dataset.replace(train_images=dataset.train_images[:150],
                            train_labels=dataset.train_labels[:150])
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  whole = score_grand_at_init(str(tmp_path / "one"), dataset, model, [1, 2], 50, False)
  split = str(tmp_path / "two")
  assert score_grand_at_init(split, dataset, model, [1, 2], 50, False, Worker(2, 1)) is None
  merged = score_grand_at_init(split, dataset, model, [1, 2], 50, False, Worker(2, 0))
  for suffix in (".npy", ".std.npy", ".runs.npy"):
    np.testing.assert_array_equal(np.load(merged[:-4] + suffix), np.load(whole[:-4] + suffix))


@pytest.fixture
def three_step_runs():
  """(dataset, model, train config) of 3-step runs of a tiny CNN on digits."""
  from datadiet_jax.data.sources import load_dataset
  from datadiet_jax.models import get_model
  from datadiet_jax.train.loop import TrainConfig
  dataset = load_dataset("digits")
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  return dataset, model, TrainConfig(num_steps=3, batch_size=32, eval_every_steps=-1,
                                     save_steps=-1, augment=False)


def test_train_runs_skips_a_run_another_process_holds(tmp_path, three_step_runs):
  from datadiet_jax.train.loop import is_finished
  from datadiet_jax.train.optimizer import OptimizerConfig
  from datadiet_jax.pipelines.train_runs import run_dir, train_runs
  dataset, model, train = three_step_runs
  folder = str(tmp_path)
  logger, messages = logging.getLogger("datadiet_jax"), []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: messages.append(record.getMessage())
  logger.addHandler(handler)  # (the CLI's setup_logging may have stopped propagation)
  logger.setLevel(logging.DEBUG)
  other = lock.acquire(run_dir(folder, 1), "worker 1/2")  # another live holder of run 1
  try:
    results = train_runs(folder, [0, 1], lambda r: (r, r), model, dataset,
                         OptimizerConfig(), train, progress=False, lock_label="worker 0/2")
  finally:
    other.release()
    logger.removeHandler(handler)
  log_text = "\n".join(messages)
  assert [os.path.basename(r.run_dir) for r in results] == ["run_0"]
  assert is_finished(run_dir(folder, 0), 3) and not is_finished(run_dir(folder, 1), 3)
  assert "run 1: skipped, pid" in log_text and "(worker 1/2)" in log_text, log_text
  assert not os.path.exists(os.path.join(run_dir(folder, 1), "checkpoints"))
  # Run 0's lock records who trained it and how far.
  history = lock.read_history(run_dir(folder, 0))
  assert [(h["event"], h["label"]) for h in history] == [("acquired", "worker 0/2"),
                                                         ("released", "worker 0/2")]
  assert history[1]["steps_trained"] == 3


DYNAMIC = ["--mode=dynamic_sweep", "--dataset=digits", "--model=small_cnn", "--num_filters=4",
           "--augment=false", "--batch_size=64", "--num_epochs=3", "--eval_every_steps=-1",
           "--save_steps=-1", "--noprogress", "--track_forgetting=false",
           "--dynamic_sweep_methods=full,dynamic_el2n,dynamic_random",
           "--dynamic_keep_fractions=0.5", "--dynamic_warmup_epochs=1",
           "--dynamic_rescore_every=1", "--num_seeds=1", "--score_batch_size=256"]


def test_dynamic_sweep_split_over_two_workers_equals_one_process(tmp_path):
  _, parallel, serial, out = _two_workers_then_report(DYNAMIC, "--dynamic_report_only",
                                                      tmp_path)
  assert "not finished yet" not in out

  def runs(workdir):
    with open(os.path.join(workdir, "dynamic", "results", "runs.csv")) as f:
      return sorted((r["method"], r["setting"], r["seed"], r["test_accuracy"],
                     r["test_loss"], r["train_examples"]) for r in csv.DictReader(f))
  assert runs(parallel) == runs(serial) and len(runs(serial)) == 3
  # Round robin over (full, dynamic EL2N keep 50 %, dynamic random keep 50 %): each run was
  # trained once, by its owner.
  owners = {"full/all": "worker 0/2", "dynamic_el2n/keep_50": "worker 1/2",
            "dynamic_random/keep_50": "worker 0/2"}
  for run, owner in owners.items():
    history = lock.read_history(os.path.join(parallel, "dynamic", run, "seed_0"))
    trained = [h for h in history if h["event"] == "released" and h["steps_trained"]]
    assert [h["label"] for h in trained] == [owner], (run, history)


def test_ensemble_groups_lock_their_runs_and_leave_out_a_held_one(tmp_path, three_step_runs):
  from datadiet_jax.train.loop import is_finished
  from datadiet_jax.train.optimizer import OptimizerConfig
  from datadiet_jax.pipelines.train_runs import run_dir, train_runs
  dataset, model, train = three_step_runs
  folder = str(tmp_path)
  other = lock.acquire(run_dir(folder, 1), "worker 1/2")  # another live holder of run 1
  try:
    results = train_runs(folder, [0, 1, 2], lambda r: (42 + r, 4242 + r), model, dataset,
                         OptimizerConfig(), train, progress=False, lock_label="worker 0/2",
                         ensemble_members=3)
  finally:
    other.release()
  assert [os.path.basename(r.run_dir) for r in results] == ["run_0", "run_2"]
  assert is_finished(run_dir(folder, 0), 3) and is_finished(run_dir(folder, 2), 3)
  assert not os.path.exists(os.path.join(run_dir(folder, 1), "checkpoints"))
  for r in (0, 2):  # each member's lock was held while the group trained, and records it
    history = lock.read_history(run_dir(folder, r))
    assert [(h["event"], h["label"]) for h in history] == [("acquired", "worker 0/2"),
                                                           ("released", "worker 0/2")]
    assert history[1]["steps_trained"] == 3
    assert not os.path.exists(lock.lock_path(run_dir(folder, r)))


def test_score_timing_over_two_workers_equals_one_process(tmp_path):
  """Worker 1 of 2 alone: it trains the score runs, scores every example shard of every
  scoring point, and retrains every subset (its share first, then those no live process
  holds); worker 0 then finds everything done. The table equals one process's."""
  from datadiet_jax.data.sources import load_dataset
  from datadiet_jax.models import get_model
  from datadiet_jax.train.loop import TrainConfig
  from datadiet_jax.train.optimizer import OptimizerConfig
  from datadiet_jax.pipelines.figure1 import Figure1Config
  from datadiet_jax.pipelines.score_timing import ScoreTimingConfig, run_score_timing
  dataset = load_dataset("digits")
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  train = TrainConfig(num_steps=8, batch_size=64, eval_every_steps=-1, save_steps=-1,
                      augment=False, track_forgetting=False)
  config = Figure1Config(methods=(), prune_fractions=(0.5,), score_names=("el2n",),
                         num_score_runs=1, score_step=1, score_train_steps=1,
                         grand_init_runs=0, num_seeds=1, score_batch_size=256)
  seeds_of = lambda m: (42 + m * 424242, 4242 + m * 424242)
  args = (dataset, model, OptimizerConfig(), train, config, ScoreTimingConfig((0.25, 0.5)),
          seeds_of)

  def table(out):
    # cell_text: the retrain accuracy, or the outcome counts when a run failed (not averaged)
    return [(r["step"], r["spearman_vs_final"], r["cell_text"], r["max_class_share"])
            for r in out["rows"]]

  serial = run_score_timing(str(tmp_path / "serial"), *args, progress=False)
  split = str(tmp_path / "split")
  alone = run_score_timing(split, *args, progress=False, worker=Worker(2, 1))
  assert table(alone) == table(serial)
  for step in (6, 12):  # 0.25 and 0.5 of a 22-step epoch (grid 6), in 2 merged shards
    sidecar = json.load(open(f"{split}/scores/el2n/step_{step}.json"))
    assert sidecar["merged_from_shards"] == 2
    np.testing.assert_array_equal(np.load(f"{split}/scores/el2n/step_{step}.npy"),
                                  np.load(f"{tmp_path}/serial/scores/el2n/step_{step}.npy"))
  history = lock.read_history(f"{split}/timing/random/seed_0")
  assert [h["label"] for h in history if h["event"] == "acquired"] == ["worker 1/2"]
  again = run_score_timing(split, *args, progress=False, worker=Worker(2, 0))
  assert table(again) == table(serial)
  assert lock.read_history(f"{split}/timing/random/seed_0") == history  # nothing retrained
