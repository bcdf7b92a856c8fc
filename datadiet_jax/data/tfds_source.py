"""CIFAR-10 / CIFAR-100 prepared by tensorflow-datasets (TFDS), read without downloading.

TFDS is optional (`pip install 'datadiet_jax[tfds]'`) and imported only when used. The
data must already be prepared in `data_dir`: on a machine with internet run
`tfds build cifar10 --data_dir=DIR --file_format=array_record` (array_record is read
without TensorFlow; the default tfrecord format needs TensorFlow), then copy DIR here.

Example order: TFDS's split order (the records as TFDS stored them). Mean/std: the
original CIFAR-10 constants (used for CIFAR-100 too, as the original did).
"""

from __future__ import annotations

import os

import numpy as np

from datadiet_jax.data import normalize
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.data.errors import DataError

TFDS_NAMES = ("cifar10", "cifar100")


def load_tfds(name: str, data_dir: str | None) -> Dataset:
  """Loads `name` ("cifar10" or "cifar100") from a TFDS `data_dir`, never downloading.

  Uses `tfds.data_source` (no TensorFlow needed) and falls back to
  `tfds.load(..., batch_size=-1)` (needs TensorFlow).

  Returns:
    A `Dataset` with images u8[N, 32, 32, 3] in TFDS's split order.
  """
  if name not in TFDS_NAMES:
    raise DataError(f"TFDS dataset {name!r} is not supported; use one of {list(TFDS_NAMES)}")
  tfds, how = _import_tfds(name, data_dir, "image_folder or cifar10_pickle")
  errors = []
  for read in (_read_data_source, _read_batched):
    try:
      splits, class_names = read(tfds, name, data_dir)
      break
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"{read.__name__}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
  else:
    raise DataError(f"{name} is not prepared in {data_dir} ({' | '.join(errors)}); {how}")
  return Dataset(
      name=name,
      train_images=splits["train"][0],
      train_labels=splits["train"][1],
      test_images=splits["test"][0],
      test_labels=splits["test"][1],
      class_names=tuple(class_names),
      mean=normalize.CIFAR10_MEAN.copy(),
      std=normalize.CIFAR10_STD.copy(),
      example_order=f"TFDS {name} split order (records as TFDS stored them, unshuffled)")


def _import_tfds(name: str, data_dir: str | None, local_sources: str):
  """(the tensorflow_datasets module, how to prepare `name`); DataError if TFDS is missing
  or data_dir is not a folder (downloads are never attempted)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"--dataset {name} needs tensorflow-datasets, which is not installed; "
                    f"run pip install 'datadiet_jax[tfds]' (or use --dataset {local_sources} "
                    "with local files)") from e
  how = (f"on a machine with internet run `tfds build {name} --data_dir=DIR "
         "--file_format=array_record`, copy DIR here and pass --data_dir DIR")
  if not data_dir or not os.path.isdir(data_dir):
    raise DataError(f"TFDS data_dir {data_dir!r} not found (downloads are off); {how}")
  return tfds, how


def _read_data_source(tfds, name, data_dir):
  """Random-access read (array_record files), no TensorFlow."""
  sources = tfds.data_source(name, data_dir=data_dir, download=False)
  splits = {}
  for split in ("train", "test"):
    source = sources[split]
    records = [source[i] for i in range(len(source))]
    splits[split] = (np.stack([np.asarray(r["image"], np.uint8) for r in records]),
                     np.array([r["label"] for r in records], np.int32))
  names = tfds.builder(name, data_dir=data_dir).info.features["label"].names
  return splits, names


def _read_batched(tfds, name, data_dir):
  """Whole-split read through tf.data (needs TensorFlow)."""
  data, info = tfds.load(name, data_dir=data_dir, download=False, batch_size=-1,
                         with_info=True)
  splits = {}
  for split in ("train", "test"):
    batch = tfds.as_numpy(data[split])
    splits[split] = (np.asarray(batch["image"], np.uint8), np.asarray(batch["label"], np.int32))
  return splits, info.features["label"].names


# Text data sets prepared by TFDS: name -> (sentence feature, splits used as train/test).
# GLUE's test splits are unlabelled, so the labelled validation split is the test split.
TFDS_TEXT = {"glue/sst2": ("sentence", "train", "validation"),
             "imdb_reviews": ("text", "train", "test")}


def load_tfds_text(name: str, data_dir: str | None):
  """A TFDS text-classification data set as `text.RawText` (never downloads).

  Words are the whitespace-split sentences; labels their class names. Same TFDS
  requirements as `load_tfds` (array_record needs no TensorFlow).
  """
  from datadiet_jax.data.text import RawText, RawTextSplit  # pylint: disable=g-import-not-at-top
  if name not in TFDS_TEXT:
    raise DataError(f"TFDS text data set {name!r} is not supported; use one of "
                    f"{sorted(TFDS_TEXT)}")
  tfds, how = _import_tfds(name, data_dir, "joint_nlu or text_tsv")
  feature, train_split, test_split = TFDS_TEXT[name]
  try:
    sources = tfds.data_source(name, data_dir=data_dir, download=False)
    names = tfds.builder(name, data_dir=data_dir).info.features["label"].names
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{name} is not prepared in {data_dir} ({type(e).__name__}); {how}") from e
  splits = {}
  for ours, theirs in (("train", train_split), ("test", test_split)):
    source = sources[theirs]
    records = [source[i] for i in range(len(source))]
    text_of = lambda r: r[feature].decode("utf-8") if isinstance(r[feature], bytes) else str(
        r[feature])
    splits[ours] = RawTextSplit([text_of(r).split() or ["[UNK]"] for r in records],
                                [names[int(r["label"])] for r in records])
  return RawText(name.replace("/", "_"), splits, label_names=tuple(names),
                 source=f"TFDS {name} in {data_dir}")
