"""Tests of the data sources: image folders (dir / tar), CIFAR pickles, CINIC npy, TFDS
errors, the embedded digits / MNIST-1D, `load_dataset`, and the real CIFAR-10 JPEG tar."""

import io
import os
import pickle
import random
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from datadiet_jax.data import (DATASET_NAMES, DataError, Dataset, class_balanced_subset,
                               load_dataset, sort_by_class)
from datadiet_jax.data import image_folder, normalize
from datadiet_jax.data.cifar_pickle import CIFAR10_CLASSES, load_cifar_pickle
from datadiet_jax.data.cinic import load_cinic10_npy
from datadiet_jax.data.embedded import load_digits, load_mnist1d
from datadiet_jax.data.image_folder import load_image_folder
from datadiet_jax.data.tfds_source import load_tfds

REAL_CIFAR_TAR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "..", "shared", "data", "cifar10-jpeg.tar.gz")
ARRAY_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")


# ----------------------------------------------------------------------------- helpers


def _pixels(seed, shape=(3, 2, 3)):
  return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


def _encode(pixels, fmt="PNG"):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, fmt)
  return buffer.getvalue()


def _tree():
  """{relative path: bytes} of a small image folder, and the expected arrays.

  Classes "b", "a", "c" (label order: a=0, b=1, c=2); file names out of numeric order.
  """
  files, expected = {}, {}
  names = {"train": ["2.png", "10.png", "1.png"], "test": ["7.png"]}
  seed = 0
  for split in ("train", "test"):
    xs, ys = [], []
    for label, cls in enumerate(("a", "b", "c")):
      for file_name in sorted(names[split]):  # string order: 1, 10, 2
        seed += 1
        x = _pixels(seed)
        files[f"{split}/{cls}/{file_name}"] = _encode(x)
        xs.append(x)
        ys.append(label)
    expected[split] = (np.stack(xs), np.array(ys, np.int32))
  return files, expected


def _write_dir(root, files):
  for rel, data in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)
  return str(root)


def _write_tar(path, files, top="", mode="w:gz"):
  with tarfile.open(path, mode) as tar:
    for rel, data in sorted(files.items(), reverse=True):  # member order must not matter
      info = tarfile.TarInfo(f"{top}{rel}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def _assert_same(a: Dataset, b: Dataset):
  for field in ARRAY_FIELDS:
    x, y = getattr(a, field), getattr(b, field)
    if not (x.dtype == y.dtype and np.array_equal(x, y)):  # fast path for big arrays
      np.testing.assert_array_equal(x, y, err_msg=field)
      raise AssertionError(f"{field}: dtypes differ ({x.dtype} vs {y.dtype})")
  assert a.class_names == b.class_names
  assert a.example_order == b.example_order


def _assert_matches(dataset, expected):
  for split in ("train", "test"):
    x, y = expected[split]
    np.testing.assert_array_equal(getattr(dataset, f"{split}_images"), x)
    np.testing.assert_array_equal(getattr(dataset, f"{split}_labels"), y)
    assert getattr(dataset, f"{split}_labels").dtype == np.int32


# ------------------------------------------------------------------------ image folder


def test_image_folder_directory_pixels_labels_and_order(tmp_path):
  files, expected = _tree()
  root = _write_dir(tmp_path / "shapes", files)
  dataset = load_image_folder(root, cache_dir=str(tmp_path / "cache"))
  _assert_matches(dataset, expected)
  assert dataset.name == "shapes"
  assert dataset.class_names == ("a", "b", "c")
  assert dataset.image_shape == (3, 2, 3)
  assert "file name" in dataset.example_order and "sorted" in dataset.example_order
  mean, std = normalize.channel_stats(expected["train"][0])
  np.testing.assert_allclose(dataset.mean, mean)
  np.testing.assert_allclose(dataset.std, std)


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"),
                                         (".tar", "w")])
def test_image_folder_archive_under_top_folder(tmp_path, suffix, mode):
  files, expected = _tree()
  files["train/a/._1.png"] = b"AppleDouble junk"  # hidden files are skipped
  files["train/a/notes.txt"] = b"not an image"
  archive = _write_tar(tmp_path / f"data{suffix}", files, top="./mydata/", mode=mode)
  dataset = load_image_folder(archive, cache_dir=str(tmp_path / "cache"))
  _assert_matches(dataset, expected)
  assert dataset.name == "mydata"
  assert load_image_folder(archive, name="custom", use_cache=False).name == "custom"


def test_image_folder_cifar10_classes_use_cifar10_order_and_constants(tmp_path):
  files = {}
  for split in ("train", "test"):
    for i, cls in enumerate(sorted(CIFAR10_CLASSES)):
      files[f"{split}/{cls}/0.png"] = _encode(np.full((2, 2, 3), i, np.uint8))
  dataset = load_image_folder(_write_tar(tmp_path / "c.tar.gz", files, top="cifar10/"),
                              cache_dir=str(tmp_path / "cache"))
  assert dataset.class_names == CIFAR10_CLASSES
  assert dataset.class_names[0] == "airplane" and dataset.class_names[9] == "truck"
  np.testing.assert_array_equal(dataset.train_labels, np.arange(10))
  for label, cls in enumerate(CIFAR10_CLASSES):  # the pixel value is the sorted position
    assert dataset.train_images[label, 0, 0, 0] == sorted(CIFAR10_CLASSES).index(cls)
  np.testing.assert_array_equal(dataset.mean, normalize.CIFAR10_MEAN)
  np.testing.assert_array_equal(dataset.std, normalize.CIFAR10_STD)
  assert "CIFAR-10 label order" in dataset.example_order


def test_image_folder_explicit_class_names(tmp_path):
  files, _ = _tree()
  root = _write_dir(tmp_path / "d", files)
  dataset = load_image_folder(root, class_names=["c", "a", "b", "unused"], use_cache=False)
  assert dataset.class_names == ("c", "a", "b", "unused")
  np.testing.assert_array_equal(dataset.train_labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  with pytest.raises(DataError, match=r"\['c'\] missing from class_names"):
    load_image_folder(root, class_names=["a", "b"], use_cache=False)


def test_image_folder_grayscale_and_mixed_modes(tmp_path):
  gray = {f"{s}/{c}/0.png": _encode(_pixels(i, (4, 3))) for i, (s, c) in
          enumerate([("train", "x"), ("train", "y"), ("test", "x")])}
  dataset = load_image_folder(_write_dir(tmp_path / "gray", gray), use_cache=False)
  assert dataset.image_shape == (4, 3, 1)
  np.testing.assert_array_equal(dataset.train_images[1, ..., 0], _pixels(1, (4, 3)))
  mixed = dict(gray, **{"test/y/0.png": _encode(_pixels(9, (4, 3, 3)))})
  dataset = load_image_folder(_write_dir(tmp_path / "mixed", mixed), use_cache=False)
  assert dataset.image_shape == (4, 3, 3)
  np.testing.assert_array_equal(dataset.train_images[1],
                                np.repeat(_pixels(1, (4, 3))[..., None], 3, axis=-1))


def test_image_folder_mixed_sizes_is_an_error(tmp_path):
  files, _ = _tree()
  files["test/c/8.png"] = _encode(_pixels(0, (5, 5, 3)))
  with pytest.raises(DataError, match=r"test/c/8\.png is 5x5 .*same size"):
    load_image_folder(_write_dir(tmp_path / "d", files), use_cache=False)


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_image_folder_corrupt_jpeg_in_tar_names_the_member(tmp_path, corruption):
  files, _ = _tree()
  jpeg = _encode(_pixels(3, (16, 16, 3)), "JPEG")
  files["train/b/bad.jpg"] = b"\xff\xd8 not really a jpeg" if corruption == "garbage" else (
      jpeg[:len(jpeg) // 2])
  archive = _write_tar(tmp_path / "d.tar.gz", files, top="top/")
  with pytest.raises(DataError, match=r"cannot decode image top/train/b/bad\.jpg in "):
    load_image_folder(archive, cache_dir=str(tmp_path / "cache"))


def test_image_folder_missing_path_and_bad_layouts(tmp_path):
  with pytest.raises(DataError, match=r"not found; pass --data_dir pointing to"):
    load_image_folder(str(tmp_path / "nowhere.tar.gz"))
  only_train = {"train/a/0.png": _encode(_pixels(0))}
  with pytest.raises(DataError, match="no train/ and test/ folders"):
    load_image_folder(_write_dir(tmp_path / "d", only_train), use_cache=False)
  not_a_tar = tmp_path / "x.tar.gz"
  not_a_tar.write_bytes(b"hello")
  with pytest.raises(DataError, match="cannot read archive"):
    load_image_folder(str(not_a_tar), use_cache=False)


def test_image_folder_cache_is_used_then_rebuilt_when_stale_or_corrupt(tmp_path, monkeypatch):
  files, expected = _tree()
  archive = _write_tar(tmp_path / "d.tar.gz", files)
  cache_dir = str(tmp_path / "cache")
  first = load_image_folder(archive, cache_dir=cache_dir)
  [key] = os.listdir(os.path.join(cache_dir, "image_folder"))
  cache = os.path.join(cache_dir, "image_folder", key)
  assert sorted(os.listdir(cache)) == sorted(
      ["meta.json"] + [f"{k}.npy" for k in ARRAY_FIELDS])

  # A second load reads only the cache: the archive is never opened.
  def no_open(*args, **kwargs):
    raise AssertionError("the archive was re-read despite a valid cache")
  with monkeypatch.context() as m:
    m.setattr(image_folder.tarfile, "open", no_open)
    second = load_image_folder(archive, cache_dir=cache_dir)
  _assert_same(first, second)

  # A corrupt cache file is rebuilt.
  with open(os.path.join(cache, "train_images.npy"), "wb") as f:
    f.write(b"garbage")
  _assert_same(first, load_image_folder(archive, cache_dir=cache_dir))
  np.testing.assert_array_equal(np.load(os.path.join(cache, "train_images.npy")),
                                expected["train"][0])

  # New data (new size/mtime) gets a new key: the stale cache is not used.
  files["train/a/1.png"] = _encode(np.zeros((3, 2, 3), np.uint8))
  _write_tar(archive, files)
  os.utime(archive, ns=(1, 1_000_000_000))
  changed = load_image_folder(archive, cache_dir=cache_dir)
  np.testing.assert_array_equal(changed.train_images[0], 0)
  assert len(os.listdir(os.path.join(cache_dir, "image_folder"))) == 2

  # use_cache=False reads and writes nothing.
  fresh = str(tmp_path / "unused_cache")
  _assert_same(changed, load_image_folder(archive, cache_dir=fresh, use_cache=False))
  assert not os.path.exists(fresh)


def test_image_folder_default_cache_dir_from_env(tmp_path, monkeypatch):
  monkeypatch.setenv("DATADIET_CACHE", str(tmp_path / "env_cache"))
  files, _ = _tree()
  load_dataset("image_folder", data_dir=_write_dir(tmp_path / "d", files))
  assert os.listdir(tmp_path / "env_cache" / "image_folder")


# ---------------------------------------------------------------------- CIFAR pickles


def _pickle(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)


def _cifar10_batches(folder):
  os.makedirs(folder)
  rows, labels = [], []
  for i in range(1, 6):
    data = _pixels(i, (2, 3072))
    ys = [i % 10, (3 * i) % 10]
    _pickle(os.path.join(folder, f"data_batch_{i}"), {b"data": data, b"labels": ys})
    rows.append(data)
    labels += ys
  test = _pixels(9, (3, 3072))
  _pickle(os.path.join(folder, "test_batch"), {b"data": test, b"labels": [7, 8, 9]})
  _pickle(os.path.join(folder, "batches.meta"),
          {b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
  return np.concatenate(rows), np.array(labels), test


def test_cifar10_pickle_exact_pixels_and_batch_order(tmp_path):
  folder = str(tmp_path / "cifar-10-batches-py")
  rows, labels, test = _cifar10_batches(folder)
  dataset = load_cifar_pickle(folder)
  assert dataset.name == "cifar10" and dataset.class_names == CIFAR10_CLASSES
  assert dataset.train_images.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(dataset.train_labels, labels)
  n, h, w, c = 7, 5, 30, 2  # CHW rows: channel-major, then row-major
  assert dataset.train_images[n, h, w, c] == rows[n, c * 1024 + h * 32 + w]
  np.testing.assert_array_equal(dataset.train_images,
                                rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(dataset.test_images[2, ..., 0], test[2, :1024].reshape(32, 32))
  np.testing.assert_array_equal(dataset.test_labels, [7, 8, 9])
  np.testing.assert_array_equal(dataset.mean, normalize.CIFAR10_MEAN)
  # load_dataset also accepts the parent folder.
  _assert_same(dataset, load_dataset("cifar10_pickle", data_dir=str(tmp_path)))


def test_cifar100_pickle_and_kind_mismatch(tmp_path):
  folder = tmp_path / "cifar-100-python"
  folder.mkdir()
  train, test = _pixels(1, (4, 3072)), _pixels(2, (2, 3072))
  names = [f"class{i}" for i in range(100)]
  _pickle(folder / "train", {b"data": train, b"fine_labels": [99, 0, 5, 5],
                             b"coarse_labels": [1, 2, 3, 4]})
  _pickle(folder / "test", {b"data": test, b"fine_labels": [1, 2], b"coarse_labels": [0, 0]})
  _pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in names]})
  dataset = load_dataset("cifar100_pickle", data_dir=str(folder))
  assert dataset.name == "cifar100" and dataset.class_names == tuple(names)
  np.testing.assert_array_equal(dataset.train_labels, [99, 0, 5, 5])
  np.testing.assert_array_equal(dataset.test_images,
                                test.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(dataset.std, normalize.CIFAR10_STD)
  with pytest.raises(DataError, match="holds cifar100 batches, not cifar10"):
    load_dataset("cifar10_pickle", data_dir=str(folder))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="neither CIFAR-10 batches"):
    load_cifar_pickle(str(tmp_path / "empty"))
  with pytest.raises(DataError, match="not found; pass --data_dir"):
    load_cifar_pickle(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------ CINIC


@pytest.mark.parametrize("one_hot", [False, True])
def test_cinic10_npy_train_is_train_then_valid(tmp_path, one_hot):
  folder = tmp_path / "cinic10"
  folder.mkdir()
  arrays = {}
  for i, (split, n) in enumerate((("train", 3), ("valid", 2), ("test", 2))):
    x, y = _pixels(i, (n, 32, 32, 3)), (np.arange(n) + i) % 10
    arrays[split] = (x, y)
    np.save(folder / f"X_{split}.npy", x)
    np.save(folder / f"Y_{split}.npy", np.eye(10, dtype=np.float32)[y] if one_hot else y)
  dataset = load_dataset("cinic10", data_dir=str(tmp_path))  # the original's layout
  np.testing.assert_array_equal(dataset.train_images,
                                np.concatenate([arrays["train"][0], arrays["valid"][0]]))
  np.testing.assert_array_equal(dataset.train_labels, [0, 1, 2, 1, 2])
  np.testing.assert_array_equal(dataset.test_labels, [2, 3])
  assert dataset.class_names == CIFAR10_CLASSES
  np.testing.assert_array_equal(dataset.mean, normalize.CINIC10_MEAN)
  _assert_same(dataset, load_cinic10_npy(str(folder)))
  os.remove(folder / "X_valid.npy")
  with pytest.raises(DataError, match="lacks X_valid.npy"):
    load_cinic10_npy(str(folder))


# ------------------------------------------------------------------------------- TFDS


def test_tfds_not_installed_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
  with pytest.raises(DataError, match=r"pip install 'datadiet_jax\[tfds\]'"):
    load_tfds("cifar10", "/some/dir")
  with pytest.raises(DataError, match=r"pip install 'datadiet_jax\[tfds\]'"):
    load_dataset("cifar100", data_dir="/some/dir")


# ------------------------------------------------------------------ embedded datasets


def test_digits_fixed_split_and_pixels():
  a, b = load_digits(), load_digits()
  _assert_same(a, b)
  assert (a.num_train, a.num_test, a.image_shape) == (1442, 355, (8, 8, 1))
  assert a.class_names == tuple("0123456789")
  assert a.train_images.dtype == np.uint8 and a.train_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(a.test_labels),
                                [35, 36, 35, 36, 36, 36, 36, 35, 34, 36])
  assert set(np.unique(a.train_images)) <= {round(v * 255 / 16) for v in range(17)}
  from sklearn.datasets import load_digits as sk_digits
  sk = sk_digits()
  test_ids = np.sort(np.concatenate([np.flatnonzero(sk.target == c)[4::5] for c in range(10)]))
  np.testing.assert_array_equal(a.test_images[..., 0], np.rint(sk.images[test_ids] * 255 / 16))
  np.testing.assert_array_equal(a.test_labels, sk.target[test_ids])
  np.testing.assert_array_equal(a.train_labels, np.delete(sk.target, test_ids))
  np.testing.assert_allclose(a.mean, normalize.channel_stats(a.train_images)[0])


def test_mnist1d_shapes_determinism_and_global_rng_untouched():
  np.random.seed(123)
  random.seed(123)
  expected_np, expected_py = np.random.rand(), random.random()
  np.random.seed(123)
  random.seed(123)
  a = load_mnist1d()
  assert (np.random.rand(), random.random()) == (expected_np, expected_py)
  _assert_same(a, load_mnist1d())
  assert (a.num_train, a.num_test, a.image_shape) == (4000, 1000, (40, 1, 1))
  assert a.train_images.dtype == np.uint8
  assert 0 < a.train_images.min() and a.train_images.max() < 255  # nothing clipped
  assert abs(float(a.mean[0]) - 128) < 1 and abs(float(a.std[0]) - 20) < 1


# ------------------------------------------------------------------------ load_dataset


def test_load_dataset_unknown_name_and_missing_data_dir():
  with pytest.raises(DataError, match="unknown dataset 'imagenet'; use one of digits, mnist1d"):
    load_dataset("imagenet")
  for name in set(DATASET_NAMES) - {"digits", "mnist1d"}:
    with pytest.raises(DataError, match=f"--dataset {name} needs --data_dir"):
      load_dataset(name)


def test_sort_by_class_is_stable():
  digits = load_digits()
  ordered = load_dataset("digits", sort_by_class=True)
  assert np.all(np.diff(ordered.train_labels) >= 0)
  for c in range(10):  # within a class, the source order is kept
    np.testing.assert_array_equal(ordered.train_images[ordered.train_labels == c],
                                  digits.train_images[digits.train_labels == c])
    np.testing.assert_array_equal(ordered.test_images[ordered.test_labels == c],
                                  digits.test_images[digits.test_labels == c])
  _assert_same(ordered, sort_by_class(digits))
  assert ordered.example_order.startswith("stable sort by label of: ")


def test_class_balanced_subset_counts_and_determinism():
  a = load_dataset("digits", train_per_class=20, subset_seed=3)
  b = load_dataset("digits", train_per_class=20, subset_seed=3)
  _assert_same(a, b)
  np.testing.assert_array_equal(np.bincount(a.train_labels), [20] * 10)
  assert a.num_test == 355  # the test split is untouched
  other = load_dataset("digits", train_per_class=20, subset_seed=4)
  assert not np.array_equal(a.train_images, other.train_images)
  both = load_dataset("digits", train_per_class=20, subset_seed=3, sort_by_class=True)
  _assert_same(both, sort_by_class(class_balanced_subset(load_digits(), 20, 3)))
  with pytest.raises(DataError, match="fewer than --train_per_class=1000"):
    load_dataset("digits", train_per_class=1000)


# ---------------------------------------------------------- real CIFAR-10 (JPEG tar)


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory):
  """(dataset, cache_dir, seconds) of the first, decoding load of the shared CIFAR-10 tar."""
  if not os.path.exists(REAL_CIFAR_TAR):
    pytest.skip(f"real CIFAR-10 JPEG tar not found at {os.path.normpath(REAL_CIFAR_TAR)} "
                "(the shared data folder is absent on this machine)")
  cache_dir = str(tmp_path_factory.mktemp("cifar_cache"))
  start = time.perf_counter()
  dataset = load_image_folder(REAL_CIFAR_TAR, cache_dir=cache_dir)
  return dataset, cache_dir, time.perf_counter() - start


@pytest.mark.slow
def test_real_cifar10_jpeg_tar(real_cifar):
  dataset, _, _ = real_cifar
  assert dataset.name == "cifar10"
  assert (dataset.num_train, dataset.num_test) == (50_000, 10_000)
  assert dataset.image_shape == (32, 32, 3)
  assert dataset.class_names == CIFAR10_CLASSES
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)
  assert np.all(np.diff(dataset.train_labels) >= 0)  # (label, file name) order
  np.testing.assert_array_equal(dataset.mean, normalize.CIFAR10_MEAN)
  with tarfile.open(REAL_CIFAR_TAR) as tar:  # the archive's first member
    member = tar.next()
    assert member.name == "cifar10/test/airplane/0000.jpg"
    first = np.asarray(Image.open(tar.extractfile(member)).convert("RGB"))
  np.testing.assert_array_equal(dataset.test_images[0], first)


@pytest.mark.slow
def test_real_cifar10_second_load_from_cache_is_fast(real_cifar):
  dataset, cache_dir, first_seconds = real_cifar
  start = time.perf_counter()
  cached = load_dataset("image_folder", data_dir=REAL_CIFAR_TAR, cache_dir=cache_dir)
  seconds = time.perf_counter() - start
  print(f"real CIFAR-10: first load {first_seconds:.1f}s, cached load {seconds:.2f}s")
  assert seconds < 2, f"cached load took {seconds:.2f}s (first load {first_seconds:.1f}s)"
  _assert_same(dataset, cached)
