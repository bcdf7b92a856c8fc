"""Coresets published as file lists, mapped to this package's global example ids.

Dyn-Unc (He et al. 2023, "Large-scale Dataset Pruning with Dynamic Uncertainty") publishes
its ImageNet coresets (e.g. `IN1K_75_file_list.txt`) in NVIDIA DALI's file-list layout, the
subset of the training folder's `file_list.txt` that is kept, one example per line:

  /<class folder>/<image file> <label>

with labels the class folders in lexicographic order. An image folder's train example i is
its i-th file in example order (data/image_folder.py: by label, then file name), so a file
list names a set of global ids; `ids_of_file_list` finds them, checking that every listed
file is in the folder, listed once, and labelled as its class folder's lexicographic rank.
The ids train a subset without rewriting the data (`--example_ids_file`).
"""

from __future__ import annotations

import os
import re

import numpy as np

from datadiet_jax.data.errors import DataError

_LINE = re.compile(r"^/?([^/\s]+)/(\S+)\s+(-?\d+)$")


def is_file_list(path: str) -> bool:
  """Whether `path` is a text file whose first non-blank line is `/<class>/<file> <label>`."""
  if path.endswith(".npy") or not os.path.isfile(path):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          return _LINE.match(line.strip()) is not None
  except (OSError, UnicodeDecodeError):
    return False
  return False


def parse_file_list(path: str) -> list[tuple[str, str, int]]:
  """[(class folder, file name, label)] of the lines of a file list; DataError if a line
  is not `/<class>/<file> <label>`."""
  entries = []
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"file list {path}: unreadable ({e}); give a text file of "
                    "'/<class>/<file> <label>' lines") from e
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    match = _LINE.match(line.strip())
    if match is None:
      raise DataError(f"file list {path}, line {number}: {line.strip()[:80]!r} is not "
                      "'/<class>/<file> <label>' (DALI's file_list.txt layout)")
    entries.append((match.group(1), match.group(2), int(match.group(3))))
  if not entries:
    raise DataError(f"file list {path}: no lines; list the kept examples as "
                    "'/<class>/<file> <label>'")
  return entries


def ids_of_file_list(path: str, data_dir: str, class_names=None,
                     num_train: int | None = None) -> np.ndarray:
  """i64[K] global train ids of the files a file list names, in the list's order.

  data_dir: the image folder (directory or tar) the list was made from; num_train: the
  train size of the data set the ids are for (its ids are the whole folder's, so a subset
  of the folder, e.g. --train_per_class, is refused). DataError if a listed file is not a
  train image there, is listed twice, or its label is not the lexicographic rank of its
  class folder (a list made from another class set)."""
  from datadiet_jax.data.image_folder import train_files  # pylint: disable=g-import-not-at-top
  if not data_dir or not os.path.exists(data_dir):
    raise DataError(f"file list {path}: the image folder it names files of is needed; pass "
                    f"--data_dir (got {data_dir!r})")
  entries = parse_file_list(path)
  classes, files = train_files(data_dir, class_names)
  if num_train is not None and num_train != len(files):
    raise DataError(f"file list {path}: names files of all {len(files)} train images of "
                    f"{data_dir}, but the data set has {num_train} (a subset such as "
                    "--train_per_class); train on the whole folder")
  id_of = {name: i for i, name in enumerate(files)}
  lexicographic = {c: i for i, c in enumerate(sorted(classes))}
  unknown = [f"/{c}/{f}" for c, f, _ in entries if (c, f) not in id_of]
  if unknown:
    raise DataError(f"file list {path}: {len(unknown)} listed files are not train images of "
                    f"{data_dir} (first: {', '.join(unknown[:3])}); use the list made from "
                    "this folder")
  mislabelled = [f"/{c}/{f} {label}" for c, f, label in entries if label != lexicographic[c]]
  if mislabelled:
    raise DataError(f"file list {path}: {len(mislabelled)} labels are not the class folder's "
                    f"lexicographic rank (first: {', '.join(mislabelled[:3])}); the list was "
                    "made from another class set")
  ids = np.array([id_of[(c, f)] for c, f, _ in entries], np.int64)
  if len(np.unique(ids)) != len(ids):
    raise DataError(f"file list {path}: {len(ids) - len(np.unique(ids))} files listed more "
                    "than once; list each example once")
  return ids
