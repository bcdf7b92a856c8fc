"""An image folder, as a directory or a .tar / .tar.gz / .tgz archive, with a .npy cache.

Layout (the one torchvision's and TFDS's ImageFolder read), possibly under top folders:

  [top/]train/<class>/<image>.{jpg,jpeg,png}
  [top/]test/<class>/<image>.{jpg,jpeg,png}

The folder that has both `train` and `test` children is used (the shallowest one).
Hidden files and folders (names starting with ".", e.g. macOS `._x.jpg`) and
`__MACOSX` are skipped; so are files with other extensions.

Labels: the class folder names, in this order:
  * `class_names` when given (every class folder must be listed in it);
  * CIFAR-10's label order (airplane=0, automobile=1, ..., truck=9) when the set of
    class folders is exactly CIFAR-10's ten classes;
  * otherwise the class names sorted as strings.

Example order, in each split: by label, then by file name (string order) within a class.

Pixels: decoded with Pillow to RGB uint8, u8[N, H, W, 3]; u8[N, H, W, 1] when every
image is single-channel ("L" mode). All images must have the same size.

Mean/std: the original CIFAR-10 constants when the class set is CIFAR-10's (as the
original code normalised CIFAR-10), otherwise `channel_stats` of the train split.

Cache: the decoded arrays are saved as .npy files (written atomically) under
`cache_dir/image_folder/<key>/`, where the key hashes the absolute path, the size and
modification time of the archive (of every file, for a directory) and `class_names`.
Changing the data changes the key; a missing, partial or corrupt cache is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import zlib

import numpy as np
from PIL import Image

from datadiet_jax import artifacts
from datadiet_jax.data import normalize
from datadiet_jax.data.cifar_pickle import CIFAR10_CLASSES
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CACHE_FORMAT = 1
_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_LAYOUT_HINT = ("a folder or .tar/.tar.gz archive holding train/<class>/*.jpg and "
                "test/<class>/*.jpg (.jpeg/.png also read)")


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One image file found in the folder or archive."""
  root: tuple[str, ...]  # the folders above train/ and test/
  split: str
  class_name: str
  file_name: str
  where: str  # the archive member name or the file path, for messages
  data: bytes | None  # the bytes (archives) or None (read from `where` or `member`)
  member: tarfile.TarInfo | None = None  # a member of an uncompressed tar, read on demand


def default_cache_dir() -> str:
  """`$DATADIET_CACHE`, else `~/.cache/datadiet_jax`."""
  return os.path.expanduser(os.environ.get("DATADIET_CACHE") or "~/.cache/datadiet_jax")


def load_image_folder(path: str,
                      name: str | None = None,
                      cache_dir: str | None = None,
                      class_names: tuple[str, ...] | list[str] | None = None,
                      use_cache: bool = True) -> Dataset:
  """Loads `{train,test}/<class>/<image>` from a directory or a tar archive.

  Args:
    path: a directory or a `.tar`/`.tar.gz`/`.tgz` archive (see the module docstring).
    name: the dataset's name; default the top folder's name (e.g. `cifar10`), else the
      folder's or archive's base name.
    cache_dir: where decoded arrays are cached; default `default_cache_dir()`.
    class_names: optional explicit label order (label = index).
    use_cache: read and write the cache (False always decodes, and writes nothing).

  Returns:
    A `Dataset`: images u8[N, H, W, C] (C = 3, or 1 if all images are grayscale),
    labels i32[N], in (label, file name) order.
  """
  if not os.path.exists(path):
    raise DataError(f"image folder {path} not found; pass --data_dir pointing to "
                    f"{_LAYOUT_HINT}")
  if class_names is not None:
    class_names = tuple(class_names)
    if len(set(class_names)) != len(class_names):
      raise DataError(f"class_names {list(class_names)} has duplicates; list each class once")
  cache = None
  if use_cache:
    cache = os.path.join(cache_dir or default_cache_dir(), "image_folder",
                         _cache_key(path, class_names))
    cached = _read_cache(cache)
    if cached is not None:
      return cached.replace(name=name or cached.name)
  dataset = _decode_folder(path, class_names)
  if cache is not None:
    _write_cache(cache, dataset)
  return dataset.replace(name=name or dataset.name)


def _in_example_order(entries: list[_Entry], split: str, label_of: dict) -> list[_Entry]:
  """The entries of `split` in example order: by label, then by file name."""
  return sorted((e for e in entries if e.split == split),
                key=lambda e: (label_of[e.class_name], e.file_name))


def train_files(path: str, class_names=None) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
  """(class names in label order, [(class folder, file name)] of the train split in example
  order: entry i is train example i of `load_image_folder(path, class_names)`), read from
  the folder's names alone (nothing is decoded)."""
  entries = _scan_archive(path) if os.path.isfile(path) else _scan_directory(path)
  _, entries = _select_root(path, entries)
  class_names = None if class_names is None else tuple(class_names)
  classes, _ = _class_order({e.class_name for e in entries}, class_names, path)
  label_of = {c: i for i, c in enumerate(classes)}
  return classes, [(e.class_name, e.file_name)
                   for e in _in_example_order(entries, "train", label_of)]


def _decode_folder(path: str, class_names: tuple[str, ...] | None) -> Dataset:
  entries = _scan_archive(path) if os.path.isfile(path) else _scan_directory(path)
  root, entries = _select_root(path, entries)
  classes, rule = _class_order({e.class_name for e in entries}, class_names, path)
  label_of = {c: i for i, c in enumerate(classes)}
  splits = {}
  grays = []
  size = None  # (shape, where) of the first image decoded
  for split in SPLITS:
    chosen = _in_example_order(entries, split, label_of)
    images = None
    for i, entry in enumerate(chosen):
      pixels, gray = _decode(entry)
      if size is None:
        size = (pixels.shape, entry.where)
      elif pixels.shape != size[0]:
        raise DataError(f"{entry.where} is {_hw(pixels.shape)} but {size[1]} is "
                        f"{_hw(size[0])}; all images must have the same size: resize them")
      if images is None:
        images = np.empty((len(chosen), *pixels.shape), np.uint8)
      images[i] = pixels
      grays.append(gray)
    labels = np.array([label_of[e.class_name] for e in chosen], np.int32)
    splits[split] = (images, labels)
  if all(grays):  # L -> RGB replicates the gray value, so channel 0 is exact.
    splits = {s: (np.ascontiguousarray(x[..., :1]), y) for s, (x, y) in splits.items()}
  train_images, train_labels = splits["train"]
  if set(classes) == set(CIFAR10_CLASSES):
    mean, std = normalize.CIFAR10_MEAN.copy(), normalize.CIFAR10_STD.copy()
  else:
    mean, std = normalize.channel_stats(train_images)
  return Dataset(
      name=root[-1] if root else _base_name(path),
      train_images=train_images,
      train_labels=train_labels,
      test_images=splits["test"][0],
      test_labels=splits["test"][1],
      class_names=classes,
      mean=mean,
      std=std,
      example_order=_example_order(root, rule))


def _example_order(root: tuple[str, ...], rule: str) -> str:
  return (f"image folder {'/'.join((*root, ''))}{{train,test}}/<class>/<file>: each split by "
          f"label, then by file name (string order); labels: {rule}")


@dataclasses.dataclass(frozen=True)
class FolderStream:
  """An image folder read one image at a time (`stream_image_folder`): what
  `load_image_folder` returns, but for the pixels, which `image(split, i)` decodes on demand.

  entries: {split: [entry]} in example order; labels: {split: i32[N]}; image_shape:
  (H, W, C), C = 1 if every image is single-channel; mean/std: None unless the classes are
  CIFAR-10's (then its constants; else the caller computes channel_stats' values).
  """
  path: str
  name: str
  class_names: tuple
  entries: dict
  labels: dict
  image_shape: tuple
  example_order: str
  mean: object = None
  std: object = None

  def image(self, split: str, i: int) -> np.ndarray:
    """u8[H, W, C] of example i of `split` (its size was checked from its header)."""
    pixels, _ = _decode(self.entries[split][i], self.path)
    return pixels[..., :self.image_shape[2]]


def stream_image_folder(path: str, class_names=None) -> FolderStream:
  """The folder `path` (a directory or an uncompressed .tar) with nothing decoded: names,
  labels and example order as `load_image_folder` gives them, the image size and channel
  count from each file's header. A directory or .tar is read file by file later (memory:
  one image); a compressed archive (.tar.gz / .tgz: no random access) has its encoded bytes
  read into memory here."""
  if not os.path.exists(path):
    raise DataError(f"image folder {path} not found; pass --data_dir pointing to "
                    f"{_LAYOUT_HINT}")
  if os.path.isdir(path):
    entries = _scan_directory(path)
  elif path.endswith(".tar"):
    entries = _scan_tar_members(path)
  else:
    entries = _scan_archive(path)
  root, entries = _select_root(path, entries)
  class_names = None if class_names is None else tuple(class_names)
  classes, rule = _class_order({e.class_name for e in entries}, class_names, path)
  label_of = {c: i for i, c in enumerate(classes)}
  chosen = {split: _in_example_order(entries, split, label_of) for split in SPLITS}
  size, gray = None, True
  for split in SPLITS:
    for entry in chosen[split]:
      shape, is_gray = _header(entry, path)
      gray = gray and is_gray
      if size is None:
        size = (shape, entry.where)
      elif shape != size[0]:
        raise DataError(f"{entry.where} is {shape[0]}x{shape[1]} but {size[1]} is "
                        f"{size[0][0]}x{size[0][1]}; all images must have the same size: "
                        "resize them")
  cifar = set(classes) == set(CIFAR10_CLASSES)
  return FolderStream(
      path=path, name=root[-1] if root else _base_name(path), class_names=classes,
      entries=chosen,
      labels={s: np.array([label_of[e.class_name] for e in chosen[s]], np.int32)
              for s in SPLITS},
      image_shape=(*size[0], 1 if gray else 3), example_order=_example_order(root, rule),
      mean=normalize.CIFAR10_MEAN.copy() if cifar else None,
      std=normalize.CIFAR10_STD.copy() if cifar else None)


def _scan_tar_members(path: str) -> list[_Entry]:
  """An uncompressed tar's image members, by name and offset (nothing read but headers)."""
  entries = []
  try:
    with tarfile.open(path, "r:") as tar:
      for member in tar.getmembers():
        if not member.isfile():
          continue
        parsed = _parse(tuple(posixpath.normpath(member.name).split("/")))
        if parsed is not None:
          entries.append(_Entry(*parsed, where=f"{member.name} in {path}", data=None,
                                member=member))
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataError(f"cannot read archive {path} ({type(e).__name__}: {_one_line(e)}); "
                    f"pass --data_dir pointing to {_LAYOUT_HINT}") from e
  return entries


def _source(entry: _Entry, path: str):
  """A file object or path Pillow can open for `entry`."""
  if entry.data is not None:
    return io.BytesIO(entry.data)
  if entry.member is not None:  # a member of the uncompressed tar `path`: its bytes in place
    with open(path, "rb") as f:
      f.seek(entry.member.offset_data)
      return io.BytesIO(f.read(entry.member.size))
  return entry.where


def _header(entry: _Entry, path: str) -> tuple[tuple[int, int], bool]:
  """((H, W), single-channel) of an image file, from its header."""
  try:
    with Image.open(_source(entry, path)) as image:
      return (image.height, image.width), image.mode == "L"
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"cannot decode image {entry.where} ({type(e).__name__}: {_one_line(e)}); "
                    "replace or remove that file") from e


def _parse(parts: tuple[str, ...]):
  """Path parts -> (root, split, class, file) for `[root/]split/class/file.ext`, or None."""
  parts = tuple(p for p in parts if p not in ("", "."))
  if len(parts) < 3 or any(p.startswith(".") or p == "__MACOSX" for p in parts):
    return None
  split, class_name, file_name = parts[-3:]
  if split not in SPLITS or not file_name.lower().endswith(IMAGE_EXTENSIONS):
    return None
  return parts[:-3], split, class_name, file_name


def _scan_archive(path: str) -> list[_Entry]:
  """Reads a tar archive member by member (streaming: nothing is extracted to disk)."""
  entries = []
  try:
    with tarfile.open(path, "r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        parsed = _parse(tuple(posixpath.normpath(member.name).split("/")))
        if parsed is None:
          continue
        data = tar.extractfile(member).read()
        entries.append(_Entry(*parsed, where=f"{member.name} in {path}", data=data))
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise DataError(f"cannot read archive {path} ({type(e).__name__}: {_one_line(e)}); "
                    f"pass --data_dir pointing to {_LAYOUT_HINT}") from e
  return entries


def _scan_directory(path: str) -> list[_Entry]:
  entries = []
  for folder, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
    rel = os.path.relpath(folder, path)
    rel_parts = () if rel == "." else tuple(rel.split(os.sep))
    for file_name in files:
      parsed = _parse((*rel_parts, file_name))
      if parsed is not None:
        entries.append(_Entry(*parsed, where=os.path.join(folder, file_name), data=None))
  return entries


def _select_root(path: str, entries: list[_Entry]) -> tuple[tuple[str, ...], list[_Entry]]:
  """Picks the shallowest folder that has both train/ and test/ images."""
  splits_of = {}
  for e in entries:
    splits_of.setdefault(e.root, set()).add(e.split)
  roots = [r for r, s in splits_of.items() if s == set(SPLITS)]
  if not roots:
    raise DataError(f"{path} has no train/ and test/ folders of class folders with images; "
                    f"pass --data_dir pointing to {_LAYOUT_HINT}")
  depth = min(len(r) for r in roots)
  roots = sorted(r for r in roots if len(r) == depth)
  if len(roots) > 1:
    names = ", ".join("/".join(r) for r in roots)
    raise DataError(f"{path} holds several train/+test/ folders ({names}); keep one of them")
  return roots[0], [e for e in entries if e.root == roots[0]]


def _class_order(found: set[str], class_names: tuple[str, ...] | None,
                 path: str) -> tuple[tuple[str, ...], str]:
  """Returns (class names in label order, a statement of the rule used)."""
  if class_names is not None:
    unknown = sorted(found - set(class_names))
    if unknown:
      raise DataError(f"{path} has class folders {unknown} missing from class_names "
                      f"{list(class_names)}; add them or remove the folders")
    return class_names, "the order given by class_names"
  if found == set(CIFAR10_CLASSES):
    return CIFAR10_CLASSES, "CIFAR-10 label order (airplane=0 ... truck=9)"
  return tuple(sorted(found)), "class folder names sorted as strings"


def _decode(entry: _Entry, path: str = "") -> tuple[np.ndarray, bool]:
  """One image file -> (u8[H, W, 3], whether it is single-channel)."""
  source = _source(entry, path)
  try:
    with Image.open(source) as image:
      gray = image.mode == "L"
      pixels = np.asarray(image.convert("RGB"), np.uint8)
  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"cannot decode image {entry.where} ({type(e).__name__}: {_one_line(e)}); "
                    "replace or remove that file") from e
  return pixels, gray


def _cache_key(path: str, class_names: tuple[str, ...] | None) -> str:
  """A hash of the absolute path, size and mtime of the data (each file, for a folder)."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    stamp = []
    for folder, dirs, files in os.walk(path):
      dirs.sort()
      for f in sorted(files):
        st = os.stat(os.path.join(folder, f))
        stamp.append((os.path.relpath(os.path.join(folder, f), path), st.st_size, st.st_mtime_ns))
  else:
    st = os.stat(path)
    stamp = [st.st_size, st.st_mtime_ns]
  blob = json.dumps([_CACHE_FORMAT, path, stamp, class_names])
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache(folder: str) -> Dataset | None:
  """The cached dataset, or None if the cache is missing, partial or corrupt."""
  meta_file = os.path.join(folder, "meta.json")
  if not os.path.exists(meta_file):
    return None
  try:
    meta = artifacts.read_json(meta_file)
    arrays = {k: np.load(os.path.join(folder, f"{k}.npy"), allow_pickle=False) for k in _ARRAYS}
    for split in SPLITS:
      x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
      if (list(x.shape) != [meta[f"num_{split}"], *meta["image_shape"]]
          or x.dtype != np.uint8 or y.dtype != np.int32 or y.shape != x.shape[:1]):
        raise ValueError(f"{split} arrays do not match meta.json")
    return Dataset(
        name=meta["name"],
        class_names=tuple(meta["class_names"]),
        mean=np.array(meta["mean"], np.float32),
        std=np.array(meta["std"], np.float32),
        example_order=meta["example_order"],
        **arrays)
  except Exception as e:  # Any failure means: rebuild. pylint: disable=broad-except
    logging.warning("image folder cache %s is unreadable (%s: %s); rebuilding it", folder,
                    type(e).__name__, _one_line(e))
    return None


def _write_cache(folder: str, dataset: Dataset) -> None:
  """Writes the arrays, then meta.json last (its presence marks a complete cache)."""
  try:
    meta_file = os.path.join(folder, "meta.json")
    if os.path.exists(meta_file):
      os.remove(meta_file)
    for k in _ARRAYS:
      artifacts.write_npy(os.path.join(folder, f"{k}.npy"), getattr(dataset, k))
    artifacts.write_json(meta_file, {
        "format": _CACHE_FORMAT,
        "name": dataset.name,
        "class_names": list(dataset.class_names),
        "mean": dataset.mean.tolist(),
        "std": dataset.std.tolist(),
        "example_order": dataset.example_order,
        "num_train": dataset.num_train,
        "num_test": dataset.num_test,
        "image_shape": list(dataset.image_shape),
    })
  except OSError as e:
    logging.warning("cannot write image folder cache %s (%s); continuing without it", folder,
                    _one_line(e))


def _base_name(path: str) -> str:
  base = os.path.basename(os.path.normpath(path))
  for suffix in ARCHIVE_SUFFIXES:
    if base.lower().endswith(suffix):
      return base[:-len(suffix)]
  return base


def _hw(shape) -> str:
  return f"{shape[1]}x{shape[0]} (WxH)"


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())
