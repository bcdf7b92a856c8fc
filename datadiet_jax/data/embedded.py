"""Small data sets that need no download: scikit-learn's 8x8 digits and MNIST-1D.

Both are fixed (no RNG-library-version dependence in the split) and load in seconds,
so tests, examples and smoke runs can use them anywhere.
"""

from __future__ import annotations

import random

import numpy as np

from datadiet_jax.data.dataset import Dataset
from datadiet_jax.data.normalize import channel_stats

DIGIT_CLASSES = tuple(str(d) for d in range(10))
# MNIST-1D signals (standardised by mnist1d to mean 0, std 1) -> uint8:
#   u8 = clip(rint(x * MNIST1D_SCALE + MNIST1D_OFFSET), 0, 255),
# a step of 1/20 = 0.05 std over x in [-6.4, 6.35]; the default data lie in about
# [-5.5, 4.5], so nothing is clipped. Invert with x ~= (u8 - OFFSET) / SCALE.
MNIST1D_SCALE = 20.0
MNIST1D_OFFSET = 128.0


def load_digits() -> Dataset:
  """scikit-learn's bundled 8x8 digits (1,797 images): images u8[N, 8, 8, 1].

  Pixels 0..16 map to uint8 by rint(v * 255 / 16). Split (fixed, no RNG): within each
  class, in scikit-learn's order, every 5th example (the 5th, 10th, ...) is a test
  example; the others are train. Both splits keep scikit-learn's order (1,442 train,
  355 test). Mean/std: `channel_stats` of the train split.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.rint(np.asarray(digits.images, np.float64) * 255 / 16).astype(np.uint8)[..., None]
  labels = np.asarray(digits.target, np.int32)
  is_test = np.zeros(len(labels), bool)
  for c in range(10):
    members = np.flatnonzero(labels == c)
    is_test[members[4::5]] = True
  train_images = images[~is_test]
  mean, std = channel_stats(train_images)
  return Dataset(
      name="digits",
      train_images=train_images,
      train_labels=labels[~is_test],
      test_images=images[is_test],
      test_labels=labels[is_test],
      class_names=DIGIT_CLASSES,
      mean=mean,
      std=std,
      example_order=("scikit-learn load_digits order, less every 5th example of each class "
                     "(those are the test split)"))


def load_mnist1d() -> Dataset:
  """MNIST-1D (Greydanus, 2020) generated locally with its default arguments (seed 42).

  4,000 train / 1,000 test signals of length 40, stored as "images" u8[N, 40, 1, 1] by
  the fixed affine quantization documented at `MNIST1D_SCALE`. The split and order are
  mnist1d's own. Mean/std: `channel_stats` of the train split. Python's and NumPy's
  global random states are restored after generation (mnist1d seeds them globally).
  """
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  py_state, np_state = random.getstate(), np.random.get_state()
  try:
    data = make_dataset(get_dataset_args())
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  train_images, test_images = (quantize_mnist1d(data[k]) for k in ("x", "x_test"))
  mean, std = channel_stats(train_images)
  return Dataset(
      name="mnist1d",
      train_images=train_images,
      train_labels=np.asarray(data["y"], np.int32),
      test_images=test_images,
      test_labels=np.asarray(data["y_test"], np.int32),
      class_names=DIGIT_CLASSES,
      mean=mean,
      std=std,
      example_order="mnist1d make_dataset order (default arguments, seed 42)")


def quantize_mnist1d(signals: np.ndarray) -> np.ndarray:
  """f[N, L] signals -> u8[N, L, 1, 1] (see `MNIST1D_SCALE`)."""
  q = np.clip(np.rint(np.asarray(signals, np.float64) * MNIST1D_SCALE + MNIST1D_OFFSET), 0, 255)
  return q.astype(np.uint8)[:, :, None, None]
