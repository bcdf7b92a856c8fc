"""Multi-host data parallelism for real: two local CPU processes joined by
`jax.distributed.initialize` (a local coordinator, gloo CPU collectives) train one run
data-parallel - each fills only its own device's half of every global batch - and reach the
parameters of a single-process run of the same global batches."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from conftest import TEST_XLA_FLAGS, assert_same_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 4

# The CLI's flags for one short run; the data-parallel run adds --data_parallel --distributed
# --coordinator_address=localhost:<port> --num_processes=2 --process_id=<i>, which call
# jax.distributed.initialize(coordinator_address=..., num_processes=2, process_id=i) with
# gloo CPU collectives (jax 0.10's default jax_cpu_collectives_implementation).
TRAIN = ["-m", "experiments.cifar", "--mode=train", "--dataset=digits", f"--num_steps={NUM_STEPS}",
         "--batch_size=32", "--model=small_cnn", "--num_filters=4", "--lr=0.05",
         "--eval_every_steps=-1", "--save_steps=-1", "--noprogress"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = TEST_XLA_FLAGS  # one CPU device per process
  return env


# The CLI with Dataset.train_batch wrapped to append the ids each call reads to
# $READ_LOG (one line per call): the real reads, only recorded.
RECORDING_READS = """
import os, runpy, sys
from datadiet_jax.data.dataset import Dataset
read = Dataset.train_batch
def recorded(self, ids):
  with open(os.environ["READ_LOG"], "a") as f:
    f.write(" ".join(str(int(i)) for i in ids) + chr(10))
  return read(self, ids)
Dataset.train_batch = recorded
sys.argv = ["experiments.cifar", *sys.argv[1:]]
runpy.run_module("experiments.cifar", run_name="__main__")
"""


def _reads(path) -> list:
  return [np.array(line.split(), np.int64) for line in open(path).read().splitlines()]


def test_two_process_data_parallel_run_matches_single_process(tmp_path):
  port = str(_free_port())
  multi, single = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
  logs = [tmp_path / f"reads_{i}.txt" for i in range(2)] + [tmp_path / "reads_single.txt"]
  procs = [subprocess.Popen(
      [sys.executable, "-c", RECORDING_READS, *TRAIN[2:], f"--workdir={multi}",
       "--data_parallel", "--distributed", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env={**_env(), "READ_LOG": str(logs[i])}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  reference = subprocess.run([sys.executable, "-c", RECORDING_READS, *TRAIN[2:],
                              f"--workdir={single}"], cwd=REPO,
                             env={**_env(), "READ_LOG": str(logs[2])}, capture_output=True,
                             text=True, timeout=600)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
    assert "Rank" in out and "is connected to 1 peer ranks" in out  # gloo joined them
    assert f"run_0: step {NUM_STEPS}, test accuracy" in out
  assert reference.returncode == 0, reference.stderr[-3000:]
  # Each process read only its device's half of every global batch: process 0 the first
  # 16 examples of the single process's batch, process 1 the last 16.
  reads = [_reads(log) for log in logs]
  assert len(reads[2]) == NUM_STEPS and all(len(ids) == 32 for ids in reads[2])
  for i in range(2):
    assert len(reads[i]) == NUM_STEPS
    for step, (ours, whole) in enumerate(zip(reads[i], reads[2])):
      np.testing.assert_array_equal(ours, whole[16 * i:16 * (i + 1)], err_msg=f"step {step + 1}")
  # Process 0 recorded the global mesh: one CPU device per process, two in all.
  info = json.load(open(os.path.join(multi, "run_info.json")))
  assert len(info["devices"]) == 2, info["devices"]
  multi, single = os.path.join(multi, "runs", "run_0"), os.path.join(single, "runs", "run_0")

  # Both checkpoints (the two-process one written by Orbax from both processes) restored
  # here, in one process: the same parameters and momentum within float32 tolerance.
  from datadiet_jax.data.sources import load_dataset
  from datadiet_jax.models import get_model
  from datadiet_jax.train.loop import TrainConfig, restore_run_state
  from datadiet_jax.train.optimizer import OptimizerConfig
  import jax
  dataset = load_dataset("digits")
  model = get_model("small_cnn", dataset.num_classes, num_filters=4)
  config = TrainConfig(num_steps=NUM_STEPS, batch_size=32, eval_every_steps=-1,
                       save_steps=-1)
  optimizer = OptimizerConfig(learning_rate=0.05)  # restores into its structure
  seeds = (42, 4242)  # run 0 of the CLI's seed scheme
  states = {name: restore_run_state(folder, NUM_STEPS, model, dataset, optimizer, config,
                                    *seeds) for name, folder in (("multi", multi),
                                                                 ("single", single))}
  init, _ = restore_run_state(single, 0, model, dataset, optimizer, config, *seeds)
  leaves = lambda tree: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]
  a, b = leaves(states["multi"][0].params), leaves(states["single"][0].params)
  max_diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
  max_update = max(float(np.max(np.abs(x - y)))
                   for x, y in zip(b, leaves(init.params)))
  momentum_diff = max(float(np.max(np.abs(x - y))) for x, y in zip(
      leaves(states["multi"][0].opt_state), leaves(states["single"][0].opt_state)))
  print(f"multi-host vs single-process: max |param diff| {max_diff:.3g}, max |update| "
        f"{max_update:.3g}, max |opt_state diff| {momentum_diff:.3g}")
  assert max_update > 1e-3  # training moved the parameters
  assert max_diff < 1e-5, max_diff
  assert momentum_diff < 1e-5, momentum_diff
  # The forgetting statistics (integer counts) agree exactly.
  for x, y in zip(leaves(states["multi"][1]), leaves(states["single"][1])):
    np.testing.assert_array_equal(x, y)
  # Only process 0 wrote the run's files; their contents are the single-process run's.
  summary = json.load(open(os.path.join(multi, "summary.json")))
  reference_summary = json.load(open(os.path.join(single, "summary.json")))
  assert summary["final_step"] == NUM_STEPS
  assert abs(summary["test_accuracy"] - reference_summary["test_accuracy"]) <= 1 / 355


def test_two_processes_score_their_example_shards_and_merge_to_one_process_scores(tmp_path):
  """--distributed --mode=score: process i of 2 restores the same checkpoints, scores example
  shard i into its own shard file (written although it is not process 0), the processes
  meet at a barrier and process 0 merges: the score files equal the single process's."""
  import shutil
  scores = ["--scores=el2n,grand,input_norm", "--num_runs=1"]
  single, multi = tmp_path / "one_process", tmp_path / "two_processes"
  reference = subprocess.run([sys.executable, *TRAIN, "--mode=train_score", *scores,
                              f"--workdir={single}"], cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=600)
  assert reference.returncode == 0, reference.stderr[-3000:]
  shutil.copytree(single, multi, ignore=shutil.ignore_patterns("scores"))
  port = str(_free_port())
  procs = [subprocess.Popen(
      [sys.executable, *TRAIN, "--mode=score", *scores, f"--workdir={multi}", "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, out[-3000:]
    first = (0, 720) if i == 0 else (721, 1441)
    assert f"scores el2n@{NUM_STEPS}: shard {i} of 2 (examples {first[0]}..{first[1]}) " \
           "written" in out, out[-3000:]
  assert f"scores el2n@{NUM_STEPS}: 2 shards merged" in outputs[0]
  differing = 0
  for name in ("el2n", "grand", "input_norm"):
    folder = multi / "scores" / name
    assert sorted(f.name for f in folder.glob("*.shard_*of2.json")) == [
        f"step_{NUM_STEPS}.shard_0of2.json", f"step_{NUM_STEPS}.shard_1of2.json"]
    assert json.loads((folder / f"step_{NUM_STEPS}.json").read_text())["merged_from_shards"] == 2
    ours = np.load(folder / f"step_{NUM_STEPS}.npy")
    theirs = np.load(single / "scores" / name / f"step_{NUM_STEPS}.npy")
    assert_same_scores(ours, theirs)
    differing += int(np.sum(ours != theirs))
  print(f"2-process scores vs 1 process: {differing} of {3 * 1442} values not bit-equal")

