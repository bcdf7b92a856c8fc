"""`load_dataset`: one entry point over every data source, by name.

  digits, mnist1d        embedded, no download (data_dir unused)
  image_folder           data_dir: a folder or .tar/.tar.gz of {train,test}/<class>/<image>
  cifar10_pickle         data_dir: the cifar-10-batches-py folder (python-pickle release)
  cifar100_pickle        data_dir: the cifar-100-python folder
  cinic10                data_dir: a folder holding cinic10/{X,Y}_{train,valid,test}.npy
                         (as the original), or those .npy files directly
  cifar10, cifar100      tensorflow-datasets, prepared in data_dir (never downloads)
  records                data_dir: a folder written by --mode=convert (data/records.py);
                         images are read from its ArrayRecord shards on demand, in
                         the order fixed at conversion (row i = global id i; sort_by_class
                         and train_per_class act at conversion, not here)

Text (`load_text_dataset`, a `TextDataset`):

  joint_nlu              data_dir: a folder or .tar/.tar.gz in the joint-NLU layout
                         (<split>/seq.in, seq.out, label; ATIS, SNIPS)
  text_tsv               data_dir: a folder or .tar/.tar.gz of <split>.tsv (sentence, label)
  glue/sst2, imdb_reviews  tensorflow-datasets, prepared in data_dir (never downloads)

Each source documents its example order; `train_per_class` and `sort_by_class` then
transform it as their docstrings say (subset first, then the stable sort).
"""

from __future__ import annotations

import os

from datadiet_jax.data import cifar_pickle, cinic, embedded, image_folder, tfds_source
from datadiet_jax.data.dataset import Dataset, class_balanced_subset
from datadiet_jax.data.dataset import sort_by_class as _sort_by_class
from datadiet_jax.data.errors import DataError

TEXT_DATASET_NAMES = ("joint_nlu", "text_tsv") + tuple(tfds_source.TFDS_TEXT)

DATASET_NAMES = ("digits", "mnist1d", "image_folder", "cifar10_pickle", "cifar100_pickle",
                 "cinic10", "cifar10", "cifar100", "records")
_NEEDS_DATA_DIR = {
    "image_folder": "a folder or .tar/.tar.gz archive of {train,test}/<class>/<image>",
    "cifar10_pickle": "the cifar-10-batches-py folder",
    "cifar100_pickle": "the cifar-100-python folder",
    "cinic10": "a folder holding cinic10/X_train.npy ... (or the .npy files directly)",
    "cifar10": "a TFDS data_dir where cifar10 is prepared",
    "cifar100": "a TFDS data_dir where cifar100 is prepared",
    "records": "a folder written by --mode=convert (it holds records.json)",
}


def load_dataset(name: str,
                 data_dir: str | None = None,
                 cache_dir: str | None = None,
                 sort_by_class: bool = False,
                 train_per_class: int | None = None,
                 subset_seed: int = 0,
                 verify_records: bool = False) -> Dataset:
  """Loads the data set `name` (one of `DATASET_NAMES`).

  Args:
    name: which source (see the module docstring).
    data_dir: where its files are; unused by `digits` and `mnist1d`.
    cache_dir: decoded-array cache of `image_folder` (default `$DATADIET_CACHE` or
      `~/.cache/datadiet_jax`).
    sort_by_class: stable-sort both splits by label (after any subset).
    train_per_class: keep this many train examples per class
      (`class_balanced_subset`, seeded by `subset_seed`).
    subset_seed: seed of the class-balanced subset.
    verify_records: `records` only: also hash every shard against its manifest sha256.

  Returns:
    The `Dataset`.
  """
  if name not in DATASET_NAMES:
    raise DataError(f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}")
  if name in _NEEDS_DATA_DIR and not data_dir:
    raise DataError(f"--dataset {name} needs --data_dir pointing to {_NEEDS_DATA_DIR[name]}")
  if name == "digits":
    dataset = embedded.load_digits()
  elif name == "mnist1d":
    dataset = embedded.load_mnist1d()
  elif name == "image_folder":
    dataset = image_folder.load_image_folder(data_dir, cache_dir=cache_dir)
  elif name in ("cifar10_pickle", "cifar100_pickle"):
    dataset = cifar_pickle.load_cifar_pickle(data_dir, expected=name[:-len("_pickle")])
  elif name == "cinic10":
    nested = os.path.join(data_dir, "cinic10")
    dataset = cinic.load_cinic10_npy(
        nested if os.path.isfile(os.path.join(nested, "X_train.npy")) else data_dir)
  elif name == "records":
    from datadiet_jax.data import records  # pylint: disable=g-import-not-at-top
    dataset = records.load_records(data_dir, verify_sha256=verify_records)
    # Row i is the record of global id i, in the order fixed at conversion (which applied
    # --sort_by_class / --train_per_class): re-sorting or sub-setting here would read every
    # image into memory and renumber the examples. A subset trains via --example_ids_file.
    if train_per_class is not None:
      raise DataError("--train_per_class with --dataset=records: give it to --mode=convert "
                      "instead, or train a subset of the records with --example_ids_file")
    return dataset
  else:
    dataset = tfds_source.load_tfds(name, data_dir)
  if train_per_class is not None:
    try:
      dataset = class_balanced_subset(dataset, train_per_class, subset_seed)
    except ValueError as e:
      raise DataError(f"{name}: {e}") from e
  if sort_by_class:
    dataset = _sort_by_class(dataset)
  return dataset


def load_text_dataset(name: str, data_dir: str | None, max_length: int = 64,
                      subset: str | None = None, vocab_file: str | None = None,
                      lowercase: bool = True, min_word_count: int = 1,
                      sort_by_class: bool = False, train_per_class: int | None = None,
                      subset_seed: int = 0, log_fn=None):
  """Loads and tokenizes the text data set `name` (one of TEXT_DATASET_NAMES).

  Args:
    name: joint_nlu, text_tsv or a TFDS text name (see the module docstring).
    data_dir: a folder or .tar/.tar.gz archive (or the TFDS data_dir).
    max_length: tokens per example incl. [CLS]/[SEP]; longer ones are truncated (logged).
    subset: which data set when data_dir holds several (e.g. 'snips' in nlp/{atis,snips}).
    vocab_file: a WordPiece vocab.txt (a checkpoint's); None = a word-level vocabulary
      built from the train split (words seen >= min_word_count times).
    lowercase: lower-case before tokenizing (a checkpoint's do_lower_case).
    sort_by_class / train_per_class / subset_seed: as `load_dataset`.
    log_fn: called with one-line notes (UNK labels, truncation).

  Returns:
    A `text.TextDataset`.
  """
  from datadiet_jax.data import text, tokenize  # pylint: disable=g-import-not-at-top
  if name not in TEXT_DATASET_NAMES:
    raise DataError(f"unknown text dataset {name!r}; use one of {', '.join(TEXT_DATASET_NAMES)}")
  if not data_dir:
    raise DataError(f"--dataset {name} needs --data_dir (a folder or .tar/.tar.gz of the data "
                    "set; for TFDS names the TFDS data_dir)")
  if name in tfds_source.TFDS_TEXT:
    raw = tfds_source.load_tfds_text(name, data_dir)
  else:
    raw = text.read_text(data_dir, "joint_nlu" if name == "joint_nlu" else "tsv", subset)
  if vocab_file:
    tokenizer = tokenize.wordpiece_tokenizer(vocab_file, lowercase)
  else:
    tokenizer = tokenize.word_level_tokenizer(raw.splits["train"].words, lowercase,
                                              min_word_count)
  dataset = tokenize.tokenize_dataset(raw, tokenizer, max_length, log_fn)
  if train_per_class is not None:
    dataset = text.class_balanced_text_subset(dataset, train_per_class, subset_seed)
  if sort_by_class:
    dataset = text.sort_text_by_class(dataset)
  return dataset
