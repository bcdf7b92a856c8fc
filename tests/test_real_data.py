"""Real data: the shared CIFAR-10 JPEG tar through `load_dataset`, a class-balanced
1,000-image subset, and a SimpleCNN trained on it well above chance."""

import csv
import hashlib
import os
import time

import numpy as np
import pytest

from datadiet_jax.data.cifar_pickle import CIFAR10_CLASSES
from datadiet_jax.data.sources import load_dataset
from datadiet_jax.models import get_model
from datadiet_jax.train.loop import TrainConfig, run_paths, train_run
from datadiet_jax.train.optimizer import OptimizerConfig

from conftest import REAL_CIFAR_TAR

PER_CLASS = 100
TEST_PER_CLASS = 200


@pytest.fixture(scope="module")
def cifar(real_cifar_tar, shared_cifar_cache):
  """(the 100-per-class subset, the full dataset from the same cache, cache dir, seconds)."""
  cache_dir = shared_cifar_cache
  start = time.perf_counter()
  subset = load_dataset("image_folder", data_dir=REAL_CIFAR_TAR, cache_dir=cache_dir,
                        train_per_class=PER_CLASS, sort_by_class=True)
  seconds = time.perf_counter() - start
  full = load_dataset("image_folder", data_dir=REAL_CIFAR_TAR, cache_dir=cache_dir)  # cached
  return subset, full, cache_dir, seconds


def _row_hashes(images):
  return [hashlib.sha1(x.tobytes()).hexdigest() for x in images]


@pytest.mark.slow
def test_class_balanced_subset_of_real_cifar10(cifar):
  subset, full, cache_dir, seconds = cifar
  print(f"CIFAR-10 tar decoded in {seconds:.1f}s")
  assert subset.class_names == CIFAR10_CLASSES
  assert subset.num_train == 10 * PER_CLASS and subset.image_shape == (32, 32, 3)
  np.testing.assert_array_equal(np.bincount(subset.train_labels, minlength=10), [PER_CLASS] * 10)
  assert np.all(np.diff(subset.train_labels) >= 0)  # sorted by class
  assert (subset.num_test, full.num_train) == (10_000, 50_000)
  # Every subset image is a distinct train image of the full set, with the same label.
  label_of = {}
  for h, y in zip(_row_hashes(full.train_images), full.train_labels):
    label_of.setdefault(h, set()).add(int(y))
  hashes = _row_hashes(subset.train_images)
  assert len(set(hashes)) == len(hashes)
  for h, y in zip(hashes, subset.train_labels):
    assert h in label_of and int(y) in label_of[h]
  # The subset is seeded: the same call gives the same examples; another seed others.
  again = load_dataset("image_folder", data_dir=REAL_CIFAR_TAR, cache_dir=cache_dir,
                       train_per_class=PER_CLASS, sort_by_class=True)
  np.testing.assert_array_equal(again.train_images, subset.train_images)
  other = load_dataset("image_folder", data_dir=REAL_CIFAR_TAR, cache_dir=cache_dir,
                       train_per_class=PER_CLASS, sort_by_class=True, subset_seed=1)
  assert len(set(_row_hashes(other.train_images)) & set(hashes)) < len(hashes) // 2


@pytest.mark.slow
def test_simple_cnn_on_1000_real_images_beats_chance(cifar, tmp_path):
  subset = cifar[0]
  # A class-balanced test slice: the test split is sorted by class, so its first 2,000
  # images would be two classes only; keep the first 200 of every class instead.
  keep = np.concatenate([np.flatnonzero(subset.test_labels == c)[:TEST_PER_CLASS]
                         for c in range(10)])
  dataset = subset.replace(test_images=subset.test_images[keep],
                           test_labels=subset.test_labels[keep])
  assert dataset.num_test == 10 * TEST_PER_CLASS
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), [TEST_PER_CLASS] * 10)

  model = get_model("simple_cnn", 10, num_filters=16)
  # 1000 // 64 = 15 steps per epoch: 300 steps = 20 epochs, lr x0.2 after epochs 12 and 16.
  optimizer = OptimizerConfig(learning_rate=0.05, decay_epochs=(12, 16), decay_factor=0.2)
  config = TrainConfig(num_steps=300, batch_size=64, eval_every_steps=150, save_steps=-1,
                       eval_batch_size=500, augment=True)
  start = time.perf_counter()
  result = train_run(str(tmp_path / "run"), model, dataset, optimizer, config, 42, 4242,
                     progress=False)
  seconds = time.perf_counter() - start
  with open(run_paths(result.run_dir)["metrics"]) as f:
    rows = list(csv.DictReader(f))
  print(f"simple_cnn(16) on 1,000 CIFAR-10 images, 300 steps: test accuracy "
        f"{result.test_accuracy:.4f} (loss {result.test_loss:.4f}) on 2,000 test images; "
        f"{seconds:.1f}s; per eval: " +
        ", ".join(f"step {r['step']}: {float(r['test_accuracy']):.3f}" for r in rows))
  assert result.steps_trained == 300 and result.final_step == 300
  assert [int(r["step"]) for r in rows] == [0, 150, 300]
  initial = rows[0]
  assert abs(float(initial["test_accuracy"]) - 0.1) < 0.06  # an untrained net is near chance
  assert result.test_accuracy > 0.25, f"accuracy {result.test_accuracy:.3f} (chance 0.10)"
  assert result.test_loss < float(initial["test_loss"]) - 0.2
  assert float(rows[-1]["train_accuracy"]) > 0.25
