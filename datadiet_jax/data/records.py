"""ArrayRecord shards of an image dataset, and a random-access grain source over them.

`convert_dataset` writes a `Dataset`'s two splits as ArrayRecord shards plus a JSON
manifest (`records.json`); `RecordSource` reads one split back with random access (a
`grain` data source: `len` and `__getitem__`), so a split never has to fit in memory;
`record_batches` yields train batches in an order that is a pure function of
(seed, epoch), so a resumed run restarts the iterator from its step alone.

Layout of one record (all little-endian): i64 global example id, i32 label, then the
image's u8[H, W, C] bytes (H, W, C from the manifest's feature spec). The global id of a
train example is its index in the source's documented example order; test ids are their
own range 0..M-1 of the test split.

Conversion writes into `<out>.partial-<pid>` beside the output folder and renames it onto
the output at the end: a conversion killed midway leaves only the partial folder (removed
by the next conversion into the same output), never a half-written output. Converting into
a non-empty folder is an error.

Uses grain and array_record (core dependencies, pinned in pyproject.toml).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import struct

import numpy as np

from datadiet_jax.artifacts import write_json
from datadiet_jax.data import normalize
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.data.errors import DataError

MANIFEST = "records.json"
FORMAT = "datadiet_jax.records/1"
_HEADER = struct.Struct("<qi")  # global id, label


def _array_record():
  try:
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("record files need array_record (a core dependency): "
                    "pip install -e . (or pip install array_record==0.8.6)") from e
  return array_record_module


def encode_example(global_id: int, label: int, image: np.ndarray) -> bytes:
  """One record: header (i64 id, i32 label) then the image's u8[H, W, C] bytes."""
  return _HEADER.pack(int(global_id), int(label)) + np.ascontiguousarray(image, np.uint8).tobytes()


def decode_example(record: bytes, image_shape: tuple[int, int, int]) -> dict:
  """{'ids': i64, 'labels': i32, 'images': u8[H, W, C]} of one record."""
  expected = _HEADER.size + int(np.prod(image_shape))
  if len(record) != expected:
    raise DataError(f"a record of {len(record)} bytes where {expected} were expected "
                    f"(image {list(image_shape)}): the shard belongs to another data set; "
                    "convert the data again with --mode=convert")
  global_id, label = _HEADER.unpack_from(record)
  image = np.frombuffer(record, np.uint8, offset=_HEADER.size).reshape(image_shape)
  return {"ids": np.int64(global_id), "labels": np.int32(label), "images": image}


TEXT_KIND = "text"  # manifest["kind"] of a text data set (absent: images)


def encode_text_example(global_id: int, label: int, arrays) -> bytes:
  """One text record: header (i64 id, i32 label) then each i32[L] array's bytes (token ids,
  attention mask and, for joint intent + slot data, token labels)."""
  return _HEADER.pack(int(global_id), int(label)) + b"".join(
      np.ascontiguousarray(a, "<i4").tobytes() for a in arrays)


def decode_text_example(record: bytes, max_length: int, num_arrays: int) -> dict:
  """{'ids': i64, 'labels': i32, 'arrays': i32[num_arrays, L]} of one text record."""
  expected = _HEADER.size + 4 * max_length * num_arrays
  if len(record) != expected:
    raise DataError(f"a record of {len(record)} bytes where {expected} were expected "
                    f"({num_arrays} x i32[{max_length}]): the shard belongs to another data "
                    "set; convert the data again with --mode=convert")
  global_id, label = _HEADER.unpack_from(record)
  arrays = np.frombuffer(record, "<i4", offset=_HEADER.size).reshape(num_arrays, max_length)
  return {"ids": np.int64(global_id), "labels": np.int32(label), "arrays": arrays}


def _text_arrays(manifest: dict) -> list[str]:
  return ["token_ids", "attention_mask"] + (
      ["token_labels"] if manifest.get("tag_names") is not None else [])


def _decode_any(record: bytes, manifest: dict) -> dict:
  """The record's fields per the manifest (image or text layout)."""
  if manifest.get("kind") == TEXT_KIND:
    return decode_text_example(record, manifest["features"]["max_length"],
                               len(_text_arrays(manifest)))
  return decode_example(record, tuple(manifest["features"]["image_shape"]))


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _write_split(folder: str, split: str, num_examples: int, encode, shard_size: int,
                 bar) -> list[dict]:
  """Writes one split's shards (record i = encode(i)) into `folder`; returns their manifest
  entries."""
  module = _array_record()
  shards = []
  num_shards = max(1, -(-num_examples // shard_size))
  for s in range(num_shards):
    lo, hi = s * shard_size, min(num_examples, (s + 1) * shard_size)
    name = f"{split}-{s:05d}-of-{num_shards:05d}.array_record"
    path = os.path.join(folder, name)
    writer = module.ArrayRecordWriter(path, "group_size:1")
    for i in range(lo, hi):
      writer.write(encode(i))
      bar.update(1)
    writer.close()
    shards.append({"file": name, "num_examples": hi - lo, "first_id": lo,
                   "bytes": os.path.getsize(path), "sha256": _sha256(path)})
  return shards


def convert_dataset(dataset: Dataset, out_dir: str, shard_size: int = 10000,
                    progress: bool = True) -> dict:
  """Writes `dataset` as ArrayRecord shards + manifest into `out_dir`; returns the manifest.

  Raises DataError if `out_dir` exists and is not empty.
  """
  def encoder(images, labels):
    return lambda i: encode_example(i, labels[i], images[i])
  head = _image_head(dataset.name, dataset.image_shape, dataset.class_names, dataset.mean,
                     dataset.std, dataset.example_order)
  return _convert(out_dir, head, shard_size, progress, {
      "train": (dataset.train_labels, encoder(dataset.train_images, dataset.train_labels)),
      "test": (dataset.test_labels, encoder(dataset.test_images, dataset.test_labels))})


def convert_image_folder(path: str, out_dir: str, sort_by_class: bool = True,
                         class_names=None, shard_size: int = 10000,
                         progress: bool = True) -> dict:
  """Writes the image folder `path` (directory or .tar) as records, one image in memory at a
  time (image_folder.stream_image_folder): the same records, labels and manifest as
  `convert_dataset(load_image_folder(path))`, for folders larger than memory.

  sort_by_class: what load_dataset's sort_by_class does to a folder (already in label
  order: only its example-order text says so). Mean/std: CIFAR-10's constants for its
  classes, else `normalize.channel_stats` of the train split from exact integer sums.
  """
  from datadiet_jax.data import image_folder  # pylint: disable=g-import-not-at-top
  stream = image_folder.stream_image_folder(path, class_names)
  sums = normalize.ChannelSums(stream.image_shape[-1]) if stream.mean is None else None

  def encoder(split):
    def encode(i):
      image = stream.image(split, i)
      if split == "train" and sums is not None:
        sums.add(image)
      return encode_example(i, stream.labels[split][i], image)
    return stream.labels[split], encode

  def stats() -> dict:
    mean, std = (stream.mean, stream.std) if sums is None else sums.stats()
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}

  order = stream.example_order
  head = _image_head(stream.name, stream.image_shape, stream.class_names, None, None,
                     f"stable sort by label of: {order}" if sort_by_class else order)
  return _convert(out_dir, head, shard_size, progress,
                  {"train": encoder("train"), "test": encoder("test")}, late_head=stats)


def _image_head(name, image_shape, class_names, mean, std, example_order) -> dict:
  """The manifest's head of an image data set (mean/std None: filled in after the records)."""
  as_list = lambda values: None if values is None else [float(v) for v in values]
  return {"name": name,
          "features": {"ids": "i64", "labels": "i32", "images": "u8",
                       "image_shape": list(image_shape)},
          "class_names": list(class_names), "mean": as_list(mean), "std": as_list(std),
          "example_order": example_order}


def convert_text_dataset(dataset, out_dir: str, shard_size: int = 10000,
                         progress: bool = True) -> dict:
  """Writes a tokenized `TextDataset` (token ids, attention mask, labels and, for joint
  intent + slot data, token labels) as ArrayRecord shards + manifest into `out_dir`."""
  names = ["token_ids", "attention_mask"] + (
      ["token_labels"] if dataset.tag_names is not None else [])
  def encoder(split):
    labels = getattr(dataset, f"{split}_labels")
    arrays = [getattr(dataset, f"{split}_{n}") for n in names]
    return labels, lambda i: encode_text_example(i, labels[i], [a[i] for a in arrays])
  head = {"kind": TEXT_KIND, "name": dataset.name,
          "features": {"ids": "i64", "labels": "i32", **{n: "i32" for n in names},
                       "max_length": int(dataset.train_token_ids.shape[1])},
          "class_names": list(dataset.class_names),
          "tag_names": None if dataset.tag_names is None else list(dataset.tag_names),
          "vocab_size": int(dataset.vocab_size), "example_order": dataset.example_order,
          "unknown_labels": dict(dataset.unknown_labels), "truncated": dict(dataset.truncated)}
  return _convert(out_dir, head, shard_size, progress,
                  {"train": encoder("train"), "test": encoder("test")})


def is_text_records(path: str | None) -> bool:
  """True if `path` is a records folder of a text data set."""
  return is_records_dir(path) and read_manifest(path).get("kind") == TEXT_KIND


def load_text_records(folder: str, verify_sha256: bool = False):
  """The text records folder `folder` (written by convert_text_dataset) as a TextDataset.
  Text data sets are small (token ids), so both splits are read into memory; every
  record's id is checked to be its position (global id = row index)."""
  from datadiet_jax.data.text import TextDataset  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(folder)
  if manifest.get("kind") != TEXT_KIND:
    raise DataError(f"{folder}: an image records folder; train it with an image model")
  names = _text_arrays(manifest)
  fields = {}
  for split in ("train", "test"):
    check_shards(folder, manifest, split, verify_sha256)
    examples = []
    for shard in manifest["splits"][split]["shards"]:
      reader = _array_record().ArrayRecordReader(os.path.join(folder, shard["file"]))
      try:
        examples += [_decode_any(r, manifest) for r in reader.read_all()]
      finally:
        reader.close()
    ids = np.array([e["ids"] for e in examples], np.int64)
    if not np.array_equal(ids, np.arange(len(ids))):
      raise DataError(f"{folder}: {split} records are not examples 0..{len(ids) - 1} in order "
                      "(a foreign shard); convert the data again with --mode=convert")
    fields[f"{split}_labels"] = np.array([e["labels"] for e in examples], np.int32)
    arrays = np.stack([e["arrays"] for e in examples]).astype(np.int32)
    for k, name in enumerate(names):
      fields[f"{split}_{name}"] = arrays[:, k]
  return TextDataset(name=manifest["name"], class_names=tuple(manifest["class_names"]),
                     example_order=f"records of: {manifest['example_order']}",
                     vocab_size=manifest["vocab_size"],
                     tag_names=None if manifest["tag_names"] is None
                     else tuple(manifest["tag_names"]),
                     unknown_labels=manifest["unknown_labels"], truncated=manifest["truncated"],
                     **fields)


def _convert(out_dir: str, head: dict, shard_size: int, progress: bool, splits: dict,
             late_head=None) -> dict:
  """Writes every split {name: (labels i32[N], encode(i) -> record i)} as shards, the labels
  files and the manifest (`head`, updated with `late_head()` once every record is written,
  + the splits) into `<out_dir>.partial-<pid>`, then renames that onto `out_dir`. Raises
  DataError if `out_dir` exists and is not empty."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  _array_record()
  out_dir = os.path.abspath(out_dir)
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise DataError(f"--records_out {out_dir} is not empty; convert into a new (or empty) folder")
  if shard_size < 1:
    raise DataError(f"--shard_size must be >= 1, got {shard_size}")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  for stale in glob.glob(out_dir + ".partial-*"):  # a conversion killed midway
    if not _pid_alive(stale.rsplit("-", 1)[-1]):
      shutil.rmtree(stale, ignore_errors=True)
  partial = f"{out_dir}.partial-{os.getpid()}"
  os.makedirs(partial)
  try:
    total = sum(len(labels) for labels, _ in splits.values())
    with tqdm(total=total, desc="convert", unit="ex", disable=not progress,
              dynamic_ncols=True) as bar:
      shards = {split: _write_split(partial, split, len(labels), encode, shard_size, bar)
                for split, (labels, encode) in splits.items()}
    if late_head is not None:
      head = {**head, **late_head()}
    manifest = {
        "format": FORMAT, **head,
        "splits": {split: {"num_examples": int(sum(s["num_examples"] for s in entries)),
                           "id_range": [0, int(sum(s["num_examples"] for s in entries))],
                           "shards": entries}
                   for split, entries in shards.items()}}
    for split, (labels, _) in splits.items():
      np.save(os.path.join(partial, f"{split}_labels.npy"), np.asarray(labels, np.int32))
      manifest["splits"][split]["labels_sha256"] = _sha256(
          os.path.join(partial, f"{split}_labels.npy"))
    write_json(os.path.join(partial, MANIFEST), manifest)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty (checked above)
    os.replace(partial, out_dir)
  finally:
    if os.path.isdir(partial):
      shutil.rmtree(partial, ignore_errors=True)
  return manifest


def _pid_alive(pid: str) -> bool:
  """Whether process `pid` (the suffix of a `.partial-<pid>` folder) is running here."""
  if not pid.isdigit():
    return False
  if int(pid) == os.getpid():
    return False  # a folder this process left (e.g. a failed conversion before)
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def is_records_dir(path: str | None) -> bool:
  """True if `path` is a folder written by `convert_dataset` (it holds the manifest)."""
  return bool(path) and os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(folder: str) -> dict:
  path = os.path.join(folder, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: not a readable records manifest ({e}); convert the data "
                    "again with --mode=convert") from e
  if manifest.get("format") != FORMAT:
    raise DataError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; convert "
                    "the data again with --mode=convert")
  return manifest


def check_shards(folder: str, manifest: dict, split: str, verify_sha256: bool = False) -> None:
  """Raises DataError naming the first missing, truncated or foreign shard of `split`.

  Sizes are always checked; `verify_sha256` also hashes every shard (reads it whole).
  """
  for shard in manifest["splits"][split]["shards"]:
    path = os.path.join(folder, shard["file"])
    if not os.path.isfile(path):
      raise DataError(f"{path}: shard missing (the manifest lists it); copy it back or "
                      "convert the data again with --mode=convert")
    size = os.path.getsize(path)
    if size != shard["bytes"]:
      raise DataError(f"{path}: {size} bytes, the manifest says {shard['bytes']} (truncated or "
                      "replaced); copy it again or convert the data again with --mode=convert")
    _check_first_record(path, shard, manifest)
    if verify_sha256 and _sha256(path) != shard["sha256"]:
      raise DataError(f"{path}: sha256 differs from the manifest's (a foreign or corrupt "
                      "shard); copy it again or convert the data again with --mode=convert")


def _check_first_record(path: str, shard: dict, manifest: dict) -> None:
  """Raises DataError unless `path` is an ArrayRecord file of the manifest's record count
  whose first record is example `first_id` of the manifest's record layout (a foreign shard
  of the right size, e.g. another conversion's or not an ArrayRecord file, fails here)."""
  fix = "copy it again or convert the data again with --mode=convert"
  try:
    reader = _array_record().ArrayRecordReader(path)
    try:
      count = reader.num_records()
      first = reader.read([0])[0] if count else None
    finally:
      reader.close()
  except DataError:
    raise
  except Exception as e:  # array_record raises RuntimeError/ValueError on a bad file
    raise DataError(f"{path}: not a readable ArrayRecord file ({' '.join(str(e).split())[:200]}); "
                    f"{fix}") from e
  if count != shard["num_examples"]:
    raise DataError(f"{path}: {count} records, the manifest says {shard['num_examples']} (a "
                    f"foreign shard); {fix}")
  if first is not None:
    try:
      example = _decode_any(first, manifest)
    except DataError as e:
      raise DataError(f"{path}: {e}") from e
    if int(example["ids"]) != shard["first_id"]:
      raise DataError(f"{path}: first record is example {int(example['ids'])}, the manifest "
                      f"says {shard['first_id']} (a foreign shard); {fix}")


class RecordSource:
  """One split of a records folder as a random-access grain source.

  `source[i]` is example i of the split (global id i): {'ids': i64, 'labels': i32,
  'images': u8[H, W, C]}. Shards are opened lazily, once per process (grain workers).
  """

  def __init__(self, folder: str, split: str = "train", verify_sha256: bool = False):
    self.folder = os.path.abspath(folder)
    self.split = split
    self.manifest = read_manifest(self.folder)
    if split not in self.manifest["splits"]:
      raise DataError(f"{self.folder}: no split {split!r} in the manifest")
    check_shards(self.folder, self.manifest, split, verify_sha256)
    shards = self.manifest["splits"][split]["shards"]
    self.image_shape = tuple(self.manifest["features"]["image_shape"])
    self._files = [os.path.join(self.folder, s["file"]) for s in shards]
    self._starts = np.cumsum([0] + [s["num_examples"] for s in shards])
    self._readers = None

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getstate__(self):  # readers do not pickle: grain workers reopen them
    state = dict(self.__dict__)
    state["_readers"] = None
    return state

  def _reader(self, shard: int):
    if self._readers is None:
      self._readers = [None] * len(self._files)
    if self._readers[shard] is None:
      module = _array_record()
      try:
        self._readers[shard] = module.ArrayRecordReader(self._files[shard])
      except Exception as e:  # array_record raises RuntimeError/ValueError on a bad file
        raise DataError(f"{self._files[shard]}: not a readable ArrayRecord file ({e}); convert "
                        "the data again with --mode=convert") from e
    return self._readers[shard]

  def read(self, ids) -> dict:
    """{'ids': i64[B], 'labels': i32[B], 'images': u8[B, H, W, C]} of examples `ids`
    (one batched read per shard touched)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
      raise IndexError(f"example ids outside {self.split} [0, {len(self)})")
    shards = np.searchsorted(self._starts, ids, side="right") - 1
    records = [None] * len(ids)
    for shard in np.unique(shards):
      where = np.flatnonzero(shards == shard)
      local = (ids[where] - self._starts[shard]).tolist()
      for w, record in zip(where, self._reader(int(shard)).read(local)):
        records[w] = record
    size = _HEADER.size + int(np.prod(self.image_shape))
    if any(len(r) != size for r in records):
      bad = next(r for r in records if len(r) != size)
      decode_example(bad, self.image_shape)  # raises the DataError naming the sizes
    rows = np.frombuffer(b"".join(records), np.uint8).reshape(len(ids), size)  # one copy
    got = rows[:, :8].copy().view("<i8").reshape(-1).astype(np.int64)
    if not np.array_equal(got, ids):
      raise DataError(f"{self.folder}: a record holds another example's id (a foreign shard); "
                      "convert the data again with --mode=convert")
    return {"ids": got, "labels": rows[:, 8:12].copy().view("<i4").reshape(-1).astype(np.int32),
            "images": rows[:, _HEADER.size:].reshape(len(ids), *self.image_shape)}

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"example {index} outside {self.split} [0, {len(self)})")
    shard = int(np.searchsorted(self._starts, index, side="right") - 1)
    reader = self._reader(shard)
    record = reader.read([index - int(self._starts[shard])])[0]
    example = decode_example(record, self.image_shape)
    if int(example["ids"]) != index:
      raise DataError(f"{self._files[shard]}: record holds id {int(example['ids'])} where "
                      f"{index} was expected (a foreign shard); convert the data again")
    return example


def check_ids(ids: np.ndarray, num_examples: int, what: str) -> np.ndarray:
  """i64[K] `ids` after checking they name examples of a split of `num_examples`."""
  ids = np.asarray(ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise DataError(f"{what}: expected a 1-D integer array of example ids, got "
                    f"{ids.dtype}{list(ids.shape)}")
  bad = ids[(ids < 0) | (ids >= num_examples)]
  if len(bad):
    raise DataError(f"{what}: {len(bad)} ids outside the data set's [0, {num_examples}) (first "
                    f"{int(bad[0])}); use an id file written for this data set")
  return ids.astype(np.int64)


def load_example_ids(path: str, num_examples: int) -> np.ndarray:
  """i64[K] global example ids from a .npy file (e.g. a kept_ids.npy) or a text file (one id
  per line), checked to be distinct ids of a split of `num_examples` (DataError otherwise)."""
  try:
    ids = (np.load(path, allow_pickle=False) if path.endswith(".npy")
           else np.loadtxt(path, dtype=np.int64, ndmin=1))
  except (OSError, ValueError) as e:
    raise DataError(f"--example_ids_file {path}: unreadable ({' '.join(str(e).split())}); give "
                    "a .npy or text file of integer example ids") from e
  ids = check_ids(ids, num_examples, f"--example_ids_file {path}")
  if len(np.unique(ids)) != len(ids):
    raise DataError(f"--example_ids_file {path}: {len(ids) - len(np.unique(ids))} repeated ids; "
                    "list each example once")
  if not len(ids):
    raise DataError(f"--example_ids_file {path}: no ids; list the examples to train on")
  return ids


def record_batches(source, batch_size: int, seed: int, epoch: int = 0, ids=None,
                   num_threads: int = 4, prefetch: int = 2):
  """One epoch of train batches read through grain, in an order fixed by (seed, epoch).

  The order is `ids` (default all examples) permuted by grain's index shuffle of seed
  `seed + epoch`; the last partial batch is dropped. Decoding runs in grain's read threads
  (`num_threads`, `prefetch` batches ahead). Since the order is a pure function of
  (seed, epoch), resuming at a step needs no iterator state: skip `step % steps_per_epoch`
  batches of epoch `step // steps_per_epoch`.

  Yields:
    {'ids': i64[B], 'labels': i32[B], 'images': u8[B, H, W, C]}.
  """
  import grain  # pylint: disable=g-import-not-at-top
  ids = np.arange(len(source)) if ids is None else check_ids(ids, len(source), "ids")
  dataset = (grain.MapDataset.range(len(ids)).shuffle(seed=seed + epoch)
             .map(lambda i: source[int(ids[i])]).batch(batch_size, drop_remainder=True))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  yield from dataset.to_iter_dataset(options)


class RecordImages:
  """u8[N, H, W, C] images of a RecordSource, read on indexing (an int, slice or id array)."""

  def __init__(self, source: RecordSource):
    self.source = source
    self.shape = (len(source), *source.image_shape)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, ids) -> np.ndarray:
    if isinstance(ids, slice):
      ids = np.arange(len(self))[ids]
    if np.ndim(ids) == 0:
      return self.source.read([int(ids)])["images"][0]
    return self.source.read(ids)["images"]


class LazyRows:
  """Rows `ids` of a RecordSource's images, read only when indexed by ids: slicing gives
  another LazyRows, an int or id array reads those images (u8[..., H, W, C]). What
  `RecordDataset.train_inputs()` returns, so scoring reads one batch at a time."""

  reads_on_index = True  # scores.ensemble indexes it chunk by chunk instead of np.asarray

  def __init__(self, source: RecordSource, ids: np.ndarray):
    self.source = source
    self.ids = np.asarray(ids, np.int64)
    self.shape = (len(self.ids), *source.image_shape)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return LazyRows(self.source, self.ids[index])
    if np.ndim(index) == 0:
      return self.source.read([self.ids[int(index)]])["images"][0]
    return self.source.read(self.ids[np.asarray(index)])["images"]

  def __array__(self, dtype=None, copy=None):  # reads every row: only for small data
    images = self.source.read(self.ids)["images"]
    return images if dtype is None else images.astype(dtype)


@dataclasses.dataclass(frozen=True)
class RecordDataset:
  """A records folder with `Dataset`'s interface; images stay on disk, labels in memory.

  train_images / test_images: RecordImages (read on indexing); train_labels / test_labels:
  i32[N] / i32[M] from the conversion's labels files. Global id = index in the split.
  """

  name: str
  folder: str
  train_images: RecordImages
  train_labels: np.ndarray
  test_images: RecordImages
  test_labels: np.ndarray
  class_names: tuple
  mean: np.ndarray
  std: np.ndarray
  example_order: str

  num_classes = property(lambda self: len(self.class_names))
  num_train = property(lambda self: len(self.train_labels))
  num_test = property(lambda self: len(self.test_labels))
  image_shape = property(lambda self: tuple(self.train_images.shape[1:]))
  input_spec = image_shape

  def train_inputs(self, ids=slice(None)):
    """u8[K, H, W, C] images of train examples `ids`; a slice (default: all) gives a
    LazyRows that reads them batch by batch when indexed."""
    if isinstance(ids, slice):
      return LazyRows(self.train_images.source, np.arange(self.num_train)[ids])
    return self.train_images[ids]

  def train_targets(self, ids=slice(None)) -> np.ndarray:
    return self.train_labels[ids]

  def train_batch(self, ids) -> dict:
    """{'images': u8[B, H, W, C], 'labels': i32[B]} of train examples `ids` (the labels
    are the in-memory ones, so label noise applied to train_labels is honoured)."""
    return {"images": self.train_images[ids], "labels": self.train_labels[ids]}

  def test_batch(self, ids) -> dict:
    return {"images": self.test_images[ids], "labels": self.test_labels[ids].astype(np.int32)}

  def replace(self, **changes) -> "RecordDataset":
    return dataclasses.replace(self, **changes)


def load_records(folder: str, verify_sha256: bool = False) -> RecordDataset:
  """The records folder `folder` (written by convert_dataset) as a RecordDataset."""
  manifest = read_manifest(folder)
  if manifest.get("kind") == TEXT_KIND:
    raise DataError(f"{folder}: a text records folder; read it with load_text_records (the "
                    "CLI does so for --dataset=records with --model=bert)")
  sources, labels = {}, {}
  for split in ("train", "test"):
    sources[split] = RecordSource(folder, split, verify_sha256)
    path = os.path.join(folder, f"{split}_labels.npy")
    try:
      labels[split] = np.load(path).astype(np.int32)
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: unreadable ({e}); convert the data again with --mode=convert")
    if len(labels[split]) != len(sources[split]):
      raise DataError(f"{path}: {len(labels[split])} labels for {len(sources[split])} records; "
                      "convert the data again with --mode=convert")
  return RecordDataset(
      name=manifest["name"], folder=os.path.abspath(folder),
      train_images=RecordImages(sources["train"]), train_labels=labels["train"],
      test_images=RecordImages(sources["test"]), test_labels=labels["test"],
      class_names=tuple(manifest["class_names"]),
      mean=np.asarray(manifest["mean"], np.float32), std=np.asarray(manifest["std"], np.float32),
      example_order=f"records of: {manifest['example_order']}")
