"""CIFAR-10 / CIFAR-100 from the python-pickle release (`cifar-10-batches-py`, `cifar-100-python`).

Files read:
  CIFAR-10:  data_batch_1 .. data_batch_5, test_batch, batches.meta (`label_names`).
  CIFAR-100: train, test, meta (`fine_label_names`); labels are the 100 fine labels.
Each batch is a pickled dict whose `data` rows are 3072 uint8 in CHW order (1024 red,
then green, then blue, each row-major 32x32).

Example order: as stored (CIFAR-10: data_batch_1 .. data_batch_5 concatenated; CIFAR-100:
the `train` file's order). Mean/std: the original CIFAR-10 constants, for CIFAR-100 too
(as the original code did).

The batches are Python pickles: only load files you trust.
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from datadiet_jax.data import normalize
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.data.errors import DataError

# CIFAR-10's label order (label = index), shared by the sources that hold CIFAR-10 classes.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_LAYOUTS = {
    # kind: (folder name of the release, train files, test file, meta file, names key,
    #        labels key)
    "cifar10": ("cifar-10-batches-py", _CIFAR10_TRAIN, "test_batch", "batches.meta",
                b"label_names", b"labels"),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", b"fine_label_names",
                 b"fine_labels"),
}


def load_cifar_pickle(path: str, expected: str | None = None) -> Dataset:
  """Loads a CIFAR-10 or CIFAR-100 python-pickle batches folder.

  Args:
    path: the batches folder (`cifar-10-batches-py` or `cifar-100-python`), or a folder
      holding exactly one of them. Which data set it is is detected from the files.
    expected: optional `"cifar10"` or `"cifar100"`; a different detected kind is an error.

  Returns:
    A `Dataset` named `cifar10` or `cifar100` with images u8[N, 32, 32, 3].
  """
  kind, folder = _detect(path)
  if expected is not None and kind != expected:
    raise DataError(f"{folder} holds {kind} batches, not {expected}; pass --dataset "
                    f"{kind}_pickle or point --data_dir at the {expected} batches")
  _, train_files, test_file, meta_file, names_key, labels_key = _LAYOUTS[kind]
  meta = _unpickle(os.path.join(folder, meta_file))
  if names_key not in meta:
    raise DataError(f"{os.path.join(folder, meta_file)} has no {names_key.decode()}; "
                    f"re-download the {kind} python release")
  class_names = tuple(_to_str(n) for n in meta[names_key])
  train = [_read_batch(os.path.join(folder, f), labels_key) for f in train_files]
  test_images, test_labels = _read_batch(os.path.join(folder, test_file), labels_key)
  stored = ", ".join(train_files)
  return Dataset(
      name=kind,
      train_images=np.concatenate([x for x, _ in train]),
      train_labels=np.concatenate([y for _, y in train]),
      test_images=test_images,
      test_labels=test_labels,
      class_names=class_names,
      mean=normalize.CIFAR10_MEAN.copy(),
      std=normalize.CIFAR10_STD.copy(),
      example_order=f"{kind} python-pickle release, as stored ({stored} in order)")


def batch_to_images(data: np.ndarray) -> np.ndarray:
  """u8[N, 3072] rows in CHW order -> u8[N, 32, 32, 3]."""
  return np.ascontiguousarray(
      np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _detect(path: str) -> tuple[str, str]:
  """Returns (kind, folder) for a batches folder or a folder holding one."""
  if not os.path.isdir(path):
    raise DataError(f"CIFAR batches folder {path} not found; pass --data_dir pointing to "
                    "cifar-10-batches-py or cifar-100-python (the python-pickle release)")
  candidates = [path] + [os.path.join(path, layout[0]) for layout in _LAYOUTS.values()]
  found = []
  for folder in candidates:
    for kind, (_, train_files, test_file, meta_file, _, _) in _LAYOUTS.items():
      names = (*train_files, test_file, meta_file)
      if all(os.path.isfile(os.path.join(folder, n)) for n in names):
        found.append((kind, folder))
  if not found:
    raise DataError(f"{path} holds neither CIFAR-10 batches (data_batch_1..5, test_batch, "
                    "batches.meta) nor CIFAR-100 ones (train, test, meta); pass --data_dir "
                    "pointing to the extracted cifar-10-batches-py or cifar-100-python folder")
  if len(found) > 1:
    where = "; ".join(f"{k} in {f}" for k, f in found)
    raise DataError(f"{path} is ambiguous ({where}); pass --data_dir pointing to one of them")
  return found[0]


def _read_batch(file: str, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  """One pickled batch -> (u8[N, 32, 32, 3], i32[N])."""
  batch = _unpickle(file)
  if b"data" not in batch or labels_key not in batch:
    raise DataError(f"{file} lacks b'data' or {labels_key!r}; re-download the python release")
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[labels_key], np.int32)
  if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
    raise DataError(f"{file}: expected data u8[N, 3072] and N labels, got data "
                    f"{list(data.shape)} and {len(labels)} labels; re-download the release")
  return batch_to_images(data), labels


def _unpickle(file: str) -> dict:
  try:
    with open(file, "rb") as f:
      obj = pickle.load(f, encoding="bytes")
  except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
    raise DataError(f"cannot read {file} ({type(e).__name__}: {_one_line(e)}); "
                    "re-download the python release") from e
  if not isinstance(obj, dict):
    raise DataError(f"{file} is not a CIFAR batch (a pickled dict); re-download the release")
  return obj


def _to_str(name) -> str:
  return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())
