"""Pool selection (datadiet_jax/pipelines/pool_selection.py): the base/pool split, input checks, and a
small real run on the shared CIFAR-10 tar checked against an independent numpy entropy of
the restored base model's softmax on the pool."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from datadiet_jax import artifacts
from datadiet_jax.data import Dataset, load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.prune import random_from_pool
from datadiet_jax.train.loop import TrainConfig, restore_run_state, run_paths
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.train.state import model_variables
from datadiet_jax.pipelines.pool_selection import (PoolSelectionConfig, random_pick_seed,
                                                   run_pool_selection, split_base_and_pool)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seeds_of(m):
  return 42 + m * 424242, 4242 + m * 424242


# ----------------------------------------------------------------------------- the split


def _imbalanced_labels(seed=0):
  labels = np.repeat(np.arange(5), [30, 45, 60, 75, 90])
  return np.random.RandomState(seed).permutation(labels).astype(np.int32)


def test_split_is_disjoint_class_balanced_sorted_and_seeded():
  labels = _imbalanced_labels()
  base, pool = split_base_and_pool(labels, 20, 100, seed=3)
  assert base.dtype == np.int32 and pool.dtype == np.int32
  assert len(base) == 5 * 20 and len(pool) == 100
  assert np.all(np.diff(base) > 0) and np.all(np.diff(pool) > 0)  # sorted, no repeats
  assert len(np.intersect1d(base, pool)) == 0
  np.testing.assert_array_equal(np.bincount(labels[base], minlength=5), [20] * 5)
  again = split_base_and_pool(labels, 20, 100, seed=3)
  np.testing.assert_array_equal(again[0], base)
  np.testing.assert_array_equal(again[1], pool)
  other = split_base_and_pool(labels, 20, 100, seed=4)
  assert not np.array_equal(other[0], base) and not np.array_equal(other[1], pool)
  # The pool may take everything left over: then it is exactly the complement.
  base, pool = split_base_and_pool(labels, 30, len(labels) - 150, seed=1)
  np.testing.assert_array_equal(np.sort(np.concatenate([base, pool])), np.arange(len(labels)))


def test_split_pool_is_uniform_over_the_rest():
  # Over many seeds every non-base example is equally likely to be in the pool, so each
  # class's share of the pool is its share of the non-base examples: (n_c - 20) / 200.
  labels = _imbalanced_labels(1)
  counts = np.zeros(5)
  for seed in range(400):
    _, pool = split_base_and_pool(labels, 20, 50, seed=seed)
    counts += np.bincount(labels[pool], minlength=5)
  expected = (np.bincount(labels) - 20) / 200.0
  np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.01)


def test_split_rejects_bad_inputs():
  labels = _imbalanced_labels()
  with pytest.raises(ValueError, match="class 0 has 30 training examples, fewer than"):
    split_base_and_pool(labels, 31, 10, seed=0)
  with pytest.raises(ValueError, match="pool_size=151 exceeds the 150 examples left"):
    split_base_and_pool(labels, 30, 151, seed=0)
  with pytest.raises(ValueError, match="base_per_class must be a positive int"):
    split_base_and_pool(labels, 0, 10, seed=0)
  with pytest.raises(ValueError, match="pool_size must be a positive int"):
    split_base_and_pool(labels, 5, 0, seed=0)
  with pytest.raises(ValueError, match="seed must be an int"):
    split_base_and_pool(labels, 5, 10, seed=-1)
  with pytest.raises(ValueError, match="labels must be integers"):
    split_base_and_pool(labels.astype(np.float32), 5, 10, seed=0)


# ----------------------------------------------------------------------------- input checks


def _tiny_dataset(n=60):
  rng = np.random.RandomState(0)
  return Dataset(name="tiny", train_images=rng.randint(0, 256, (n, 4, 4, 3)).astype(np.uint8),
                 train_labels=(np.arange(n) % 3).astype(np.int32),
                 test_images=rng.randint(0, 256, (6, 4, 4, 3)).astype(np.uint8),
                 test_labels=(np.arange(6) % 3).astype(np.int32), class_names=("a", "b", "c"),
                 mean=np.full(3, 127.0, np.float32), std=np.full(3, 64.0, np.float32),
                 example_order="test")


@pytest.mark.parametrize("base, pool, k, score, message", [
    (np.arange(10), np.arange(10, 30), 21, "entropy", "k=21 exceeds the pool size 20"),
    (np.arange(10), np.arange(10, 30), 0, "entropy", r"k must be >= 1"),
    (np.arange(10), np.arange(10, 30), 5, "margin", "unknown pool score 'margin'"),
    (np.arange(10), np.arange(5, 30), 5, "el2n", "overlap in 5 ids"),
    (np.arange(10), np.arange(50, 70), 5, "entropy", r"pool_ids must lie in \[0, 60\)"),
    (np.array([1, 1, 2]), np.arange(10, 30), 5, "entropy", "base_ids contains repeated ids"),
    (np.arange(10), np.arange(10, 30), 2.0, "entropy", "k must be an int"),
])
def test_run_pool_selection_rejects_bad_inputs_before_doing_anything(tmp_path, base, pool, k,
                                                                      score, message):
  dataset = _tiny_dataset()
  with pytest.raises(ValueError, match=message):
    run_pool_selection(str(tmp_path), dataset, get_model("small_cnn", 3, 2), OptimizerConfig(),
                       TrainConfig(num_steps=2, batch_size=4), base, pool,
                       PoolSelectionConfig(k, score), seeds_of, progress=False)
  assert not os.path.exists(tmp_path / "pool")


# ----------------------------------------------------------------------------- real CIFAR-10

K, BASE_PER_CLASS, POOL_SIZE, STEPS = 300, 30, 1000, 150
OPTIMIZER = OptimizerConfig(learning_rate=0.05, schedule="constant")
TRAIN = TrainConfig(num_steps=STEPS, batch_size=64, eval_every_steps=-1, save_steps=-1,
                    eval_batch_size=1000, augment=False, track_forgetting=False)


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, real_cifar_tar, shared_cifar_cache):
  dataset = load_dataset("image_folder", data_dir=real_cifar_tar, cache_dir=shared_cifar_cache)
  cut = np.arange(0, dataset.num_test, 5)  # 2,000 test images, 200 per class
  dataset = dataset.replace(test_images=dataset.test_images[cut],
                            test_labels=dataset.test_labels[cut])
  base_ids, pool_ids = split_base_and_pool(dataset.train_labels, BASE_PER_CLASS, POOL_SIZE, 0)
  model = get_model("simple_cnn", dataset.num_classes, 8)
  workdir = str(tmp_path_factory.mktemp("pool_work"))
  out = run_pool_selection(workdir, dataset, model, OPTIMIZER, TRAIN, base_ids, pool_ids,
                           PoolSelectionConfig(K, "entropy", num_seeds=1), seeds_of,
                           progress=False)
  run = {"dataset": dataset, "model": model, "workdir": workdir, "out": out,
         "base_ids": base_ids, "pool_ids": pool_ids}
  run["entropy"] = _numpy_entropy(_numpy_softmax_of_base_model(run))
  return run


def _numpy_softmax_of_base_model(run):
  """f64[P, C] softmax of the restored final base model on the pool: the images normalized
  in numpy, the logits from the model's own apply, the softmax in float64 numpy."""
  dataset, model, base_ids, pool_ids = (run["dataset"], run["model"], run["base_ids"],
                                        run["pool_ids"])
  base_dir = os.path.join(run["workdir"], "pool", "base", "seed_0")
  train = dataclasses.replace(TRAIN, schedule_steps_per_epoch=len(base_ids) // TRAIN.batch_size)
  state, _ = restore_run_state(base_dir, STEPS, model, dataset, OPTIMIZER, train, *seeds_of(0),
                               example_ids=base_ids)
  x = ((dataset.train_images[pool_ids].astype(np.float64) - dataset.mean) / dataset.std)
  apply = jax.jit(lambda variables, images: model.apply(variables, images, train=False))
  logits = np.asarray(apply(model_variables(state), x.astype(np.float32)), np.float64)
  z = np.exp(logits - logits.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def _numpy_entropy(probs):
  return -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0), 1)


@pytest.mark.slow
def test_top_k_is_the_numpy_entropy_top_k(cifar_run):
  out, pool_ids, entropy = cifar_run["out"], cifar_run["pool_ids"], cifar_run["entropy"]
  saved = np.load(os.path.join(cifar_run["workdir"], "pool", "base", "seed_0",
                               "pool_scores_entropy.npy"))
  np.testing.assert_allclose(saved, entropy, atol=1e-4)
  np.testing.assert_allclose(out["pool_scores"][0], saved)
  # Not a degenerate model: the entropies spread over a good part of [0, log 10].
  assert entropy.max() - entropy.min() > 0.5
  expected = np.argsort(-entropy, kind="stable")[:K]
  chosen = np.searchsorted(pool_ids, out["added"][0]["top"])
  np.testing.assert_array_equal(pool_ids[chosen], out["added"][0]["top"])
  # The same set, except possibly for float32-vs-float64 near-ties at the k-th value.
  differ = np.setxor1d(chosen, expected)
  kth = np.sort(entropy)[::-1][K - 1]
  assert np.all(np.abs(entropy[differ] - kth) < 1e-5), (len(differ), entropy[differ], kth)
  assert len(differ) <= 2


@pytest.mark.slow
def test_top_k_is_more_uncertain_than_random_k(cifar_run):
  out, pool_ids, entropy = cifar_run["out"], cifar_run["pool_ids"], cifar_run["entropy"]
  top = np.searchsorted(pool_ids, out["added"][0]["top"])
  rand = np.searchsorted(pool_ids, out["added"][0]["random"])
  np.testing.assert_array_equal(rand, random_from_pool(POOL_SIZE, K, random_pick_seed(0)))
  assert random_pick_seed(0) == 4426 and random_pick_seed(2) == 4426 + 2 * 424242
  print(f"\nmean pool entropy: top-{K} {entropy[top].mean():.4f}, random-{K} "
        f"{entropy[rand].mean():.4f}, whole pool {entropy.mean():.4f}")
  assert entropy[top].mean() > entropy[rand].mean() + 0.1
  rows = {r["key"]: r for r in out["rows"]}
  assert rows[f"top_entropy_k{K}"]["added_mean_score"] == pytest.approx(entropy[top].mean(),
                                                                         abs=1e-4)
  assert rows[f"random_k{K}"]["added_mean_score"] == pytest.approx(entropy[rand].mean(),
                                                                   abs=1e-4)


@pytest.mark.slow
def test_runs_train_on_base_plus_added_and_results_are_written(cifar_run):
  out, workdir = cifar_run["out"], cifar_run["workdir"]
  base_ids = cifar_run["base_ids"]
  folder = os.path.join(workdir, "pool")
  accuracy = {r["key"]: r["test_accuracy"] for r in out["rows"]}
  print(f"\ntest accuracy (2,000 test images, {STEPS} steps): base "
        f"{accuracy['base']:.4f}, base + entropy-{K} {accuracy[f'top_entropy_k{K}']:.4f}, "
        f"base + random-{K} {accuracy[f'random_k{K}']:.4f}")
  for key, run_folder in (("base", "base"), (f"top_entropy_k{K}", f"top_entropy_k{K}"),
                          (f"random_k{K}", f"random_k{K}")):
    summary = artifacts.read_json(run_paths(os.path.join(folder, run_folder, "seed_0"))["summary"])
    assert summary["final_step"] == STEPS
    assert summary["test_accuracy"] == accuracy[key]
    assert summary["num_train_examples"] == len(base_ids) + (0 if key == "base" else K)
  for kind, run_folder in (("top", f"top_entropy_k{K}"), ("random", f"random_k{K}")):
    added = np.load(os.path.join(folder, run_folder, "seed_0", "added_ids.npy"))
    train_ids = np.load(os.path.join(folder, run_folder, "seed_0", "train_ids.npy"))
    np.testing.assert_array_equal(added, out["added"][0][kind])
    np.testing.assert_array_equal(train_ids, np.union1d(base_ids, added))
    assert accuracy[run_folder] > 0.13  # chance is 0.10 (binomial std 0.007 on 2,000)
  assert accuracy["base"] > 0.13
  with open(out["paths"]["csv"]) as f:
    table = list(csv.DictReader(f))
  assert [(r["key"], r["seed"]) for r in table] == [
      ("base", "0"), (f"top_entropy_k{K}", "0"), (f"random_k{K}", "0"),
      ("base", "mean"), (f"top_entropy_k{K}", "mean"), (f"random_k{K}", "mean")]
  for r in table:
    assert float(r["test_accuracy"]) == pytest.approx(accuracy[r["key"]])
  markdown = open(out["paths"]["markdown"]).read()
  assert f"base + top-{K} entropy" in markdown and f"base + random-{K}" in markdown
  assert f"| 0 | {100 * accuracy['base']:.2f} |" in markdown
  assert os.path.exists(os.path.join(folder, "base", "seed_0", "pool_scores_entropy.json"))


@pytest.mark.slow
def test_rerun_trains_and_scores_nothing(cifar_run):
  run = cifar_run
  scores_path = os.path.join(run["workdir"], "pool", "base", "seed_0", "pool_scores_entropy.npy")
  mtime = os.path.getmtime(scores_path)
  again = run_pool_selection(run["workdir"], run["dataset"], run["model"], OPTIMIZER, TRAIN,
                             run["base_ids"], run["pool_ids"], PoolSelectionConfig(K),
                             seeds_of, progress=False)
  assert again["trainings_run"] == 0 and again["scores_computed"] == 0
  assert os.path.getmtime(scores_path) == mtime
  assert again["rows"] == run["out"]["rows"]
  # A different split in the same workdir is refused instead of reusing the base run.
  with pytest.raises(ValueError, match="differ"):
    run_pool_selection(run["workdir"], run["dataset"], run["model"], OPTIMIZER, TRAIN,
                       run["base_ids"][1:], run["pool_ids"], PoolSelectionConfig(K),
                       seeds_of, progress=False)


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_pool_selection_mode_on_digits(tmp_path):
  command = [sys.executable, "-m", "experiments.cifar", "--mode=pool_selection",
             f"--workdir={tmp_path}", "--dataset=digits", "--model=small_cnn",
             "--num_filters=2", "--augment=false", "--track_forgetting=false",
             "--batch_size=32", "--num_steps=10",
             "--lr_schedule=constant", "--lr=0.05", "--eval_every_steps=-1", "--save_steps=-1",
             "--pool_base_per_class=10", "--pool_size=300", "--pool_k=50",
             "--pool_score=el2n", "--noprogress"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  markdown = os.path.join(tmp_path, "pool", "results.md")
  assert f"results: {markdown}" in done.stdout
  assert "base + top-50 EL2N" in open(markdown).read()
  scores = np.load(os.path.join(tmp_path, "pool", "base", "seed_0", "pool_scores_el2n.npy"))
  assert scores.shape == (300,) and np.all((scores >= 0) & (scores <= np.sqrt(2) + 1e-6))
  missing = subprocess.run(command[:-5] + ["--noprogress"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
  assert missing.returncode == 2
  assert "needs --pool_base_per_class, --pool_size, --pool_k" in missing.stderr
