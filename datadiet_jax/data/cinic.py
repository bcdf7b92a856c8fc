"""CINIC-10 from .npy files, laid out as the original Data Diet code read it.

Files: `X_train.npy, Y_train.npy, X_valid.npy, Y_valid.npy, X_test.npy, Y_test.npy` in one
folder; images u8[N, 32, 32, 3] (NHWC), labels either integers i[N] or one-hot [N, 10]
(converted with argmax). As in the original, train = train ++ valid (90,000 examples for
the full CINIC-10) and test = test.

Example order: X_train as stored, then X_valid as stored. Class names: CIFAR-10's, in
CIFAR-10 label order. Mean/std: the original CINIC-10 constants.
"""

from __future__ import annotations

import os

import numpy as np

from datadiet_jax.data import normalize
from datadiet_jax.data.cifar_pickle import CIFAR10_CLASSES
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.data.errors import DataError

_FILES = tuple(f"{xy}_{split}.npy" for split in ("train", "valid", "test") for xy in "XY")


def load_cinic10_npy(path: str) -> Dataset:
  """Loads CINIC-10 from `path/{X,Y}_{train,valid,test}.npy` (see the module docstring)."""
  if not os.path.isdir(path):
    raise DataError(f"CINIC-10 folder {path} not found; pass --data_dir pointing to the folder "
                    f"holding {', '.join(_FILES)} (or its parent with a cinic10/ folder)")
  missing = [f for f in _FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise DataError(f"{path} lacks {', '.join(missing)}; pass --data_dir pointing to the "
                    f"folder holding all of {', '.join(_FILES)}")
  splits = {s: _read_split(path, s) for s in ("train", "valid", "test")}
  return Dataset(
      name="cinic10",
      train_images=np.concatenate([splits["train"][0], splits["valid"][0]]),
      train_labels=np.concatenate([splits["train"][1], splits["valid"][1]]),
      test_images=splits["test"][0],
      test_labels=splits["test"][1],
      class_names=CIFAR10_CLASSES,
      mean=normalize.CINIC10_MEAN.copy(),
      std=normalize.CINIC10_STD.copy(),
      example_order="CINIC-10 npy: X_train as stored, then X_valid as stored")


def labels_from_array(y: np.ndarray) -> np.ndarray:
  """i[N] integer labels or f/i[N, K] one-hot rows -> i32[N]."""
  y = np.asarray(y)
  if y.ndim == 2:
    return np.argmax(y, axis=1).astype(np.int32)
  return y.astype(np.int32)


def _read_split(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  x_file, y_file = (os.path.join(path, f"{xy}_{split}.npy") for xy in "XY")
  try:
    x, y = np.load(x_file, allow_pickle=False), np.load(y_file, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"cannot read {x_file} / {y_file} ({' '.join(str(e).split())}); "
                    "re-create the CINIC-10 npy files") from e
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise DataError(f"{x_file}: expected images [N, H, W, C] (NHWC), got {list(x.shape)}; "
                    "save them channels-last")
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.integer) or x.size and (x.min() < 0 or x.max() > 255):
      raise DataError(f"{x_file}: expected uint8 pixels 0..255, got {x.dtype}; save them as "
                      "uint8")
    x = x.astype(np.uint8)
  labels = labels_from_array(y)
  if labels.shape != (len(x),):
    raise DataError(f"{y_file}: expected {len(x)} labels (or one-hot rows), got "
                    f"{list(y.shape)}")
  return x, labels
