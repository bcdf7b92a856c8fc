"""Text data: the `TextDataset` type, and readers of the two common text layouts.

Two layouts, each as a folder or a .tar/.tar.gz archive holding it (at any depth):

* joint NLU (JointBERT / SlotGated-SLU; ATIS, SNIPS): per split `<split>/seq.in` (words,
  space-separated), `<split>/seq.out` (BIO slot tags, one per word), `<split>/label`
  (intent); optional `intent_label.txt` / `slot_label.txt` (one label a line) fix the
  label vocabularies.
* sentence TSV (SST-2): `<split>.tsv` with the header `sentence<TAB>label`.

Splits: `train` and `test` (`dev` is read if asked for). The readers return raw strings
(`RawTextSplit`); `data/tokenize.py` turns them into the arrays of a `TextDataset`.

Labels: the vocabularies come from the label files when present, else from the train
split (sorted, `UNK` first). A test label outside the vocabulary (ATIS's test split has
5 intents and 6 slot tags that never occur in train) maps to the `UNK` id; how many did
is logged and kept in `TextDataset.unknown_labels`.

Example order: the line order of the train files (stable ids 0..N-1 are that order).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tarfile
from typing import Optional, Sequence

import numpy as np

from datadiet_jax.data.errors import DataError

log = logging.getLogger("datadiet_jax")

IGNORE_ID = -100  # token label of sub-tokens, special tokens and padding (never scored)
UNK_LABEL = "UNK"
_SLOT_SPECIALS = ("PAD", "UNK")  # JointBERT's slot_label.txt starts with these


@dataclasses.dataclass(frozen=True)
class RawTextSplit:
  """One split as strings.

  words: one list of words per example; labels: one sequence label per example;
  tags: one list of BIO tags per example (same length as its words), or None.
  """

  words: list
  labels: list
  tags: Optional[list] = None

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class RawText:
  """A text data set as read from disk: splits of strings and the label-file vocabularies."""

  name: str
  splits: dict  # split name -> RawTextSplit
  label_names: Optional[tuple] = None  # from intent_label.txt / none
  tag_names: Optional[tuple] = None  # from slot_label.txt / none
  source: str = ""


@dataclasses.dataclass(frozen=True)
class TextDataset:
  """A tokenized text data set held in memory.

  Attributes:
    name: short name (`snips`, `atis`, `sst2`, ...).
    train_token_ids: i32[N, L] token ids, padded with the tokenizer's pad id.
    train_attention_mask: i32[N, L] 1 for real tokens (incl. [CLS]/[SEP]), 0 for padding.
    train_labels: i32[N] sequence labels (intent / sentence class).
    train_token_labels: i32[N, L] slot tag of the first sub-token of every word, IGNORE_ID
      elsewhere (other sub-tokens, special tokens, padding), or None (no token task).
    test_*: the same for the test split (M examples).
    class_names: sequence-label vocabulary, index = label.
    tag_names: token-label vocabulary, or None.
    example_order: how train examples are ordered (scores are indexed by it).
    vocab_size: size of the tokenizer's vocabulary.
    unknown_labels: {'test_labels': n, 'test_tags': n, ...} labels mapped to UNK.
    truncated: {'train': n, 'test': n} examples cut at max length.
    trim_multiple: 0, or train batches keep only their first `trimmed_length` positions
      (the batch's longest example rounded up to a multiple of this): the cut positions are
      padding of every example (mask 0, no token label), so without dropout the loss and
      gradients are the same up to float rounding (with dropout the masks are drawn for
      the cut shape: other random draws, same distribution); fewer padded tokens are
      computed; one compile per length.
  """

  name: str
  train_token_ids: np.ndarray
  train_attention_mask: np.ndarray
  train_labels: np.ndarray
  test_token_ids: np.ndarray
  test_attention_mask: np.ndarray
  test_labels: np.ndarray
  class_names: tuple
  example_order: str
  vocab_size: int
  train_token_labels: Optional[np.ndarray] = None
  test_token_labels: Optional[np.ndarray] = None
  tag_names: Optional[tuple] = None
  unknown_labels: dict = dataclasses.field(default_factory=dict)
  truncated: dict = dataclasses.field(default_factory=dict)
  trim_multiple: int = 0

  def __post_init__(self):
    if self.trim_multiple < 0:
      raise ValueError(f"trim_multiple must be >= 0, got {self.trim_multiple}")
    for split in ("train", "test"):
      ids, mask, labels = (getattr(self, f"{split}_{k}") for k in
                           ("token_ids", "attention_mask", "labels"))
      tokens = getattr(self, f"{split}_token_labels")
      if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"{self.name}: {split} token ids and mask must be i32[N, L], got "
                         f"{list(ids.shape)} and {list(mask.shape)}")
      if labels.shape != (len(ids),):
        raise ValueError(f"{self.name}: {split} labels must be i32[{len(ids)}]")
      if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
        raise ValueError(f"{self.name}: {split} labels must lie in [0, {len(self.class_names)})")
      if (tokens is None) != (self.tag_names is None):
        raise ValueError(f"{self.name}: token labels and tag names go together")
      if tokens is not None and tokens.shape != ids.shape:
        raise ValueError(f"{self.name}: {split} token labels must be i32{list(ids.shape)}")
    if self.train_token_ids.shape[1] != self.test_token_ids.shape[1]:
      raise ValueError(f"{self.name}: train and test differ in max length")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_tags(self) -> int:
    return 0 if self.tag_names is None else len(self.tag_names)

  @property
  def has_token_labels(self) -> bool:
    return self.train_token_labels is not None

  @property
  def num_train(self) -> int:
    return int(self.train_token_ids.shape[0])

  @property
  def num_test(self) -> int:
    return int(self.test_token_ids.shape[0])

  @property
  def max_length(self) -> int:
    return int(self.train_token_ids.shape[1])

  @property
  def input_spec(self) -> tuple:
    """Hashable description of one example's model inputs (for model init)."""
    return (("attention_mask", (self.max_length,), "int32"),
            ("token_ids", (self.max_length,), "int32"))

  def train_inputs(self, ids=slice(None)) -> dict:
    """{'token_ids': i32[B, L], 'attention_mask': i32[B, L]} of train examples `ids`."""
    return {"token_ids": self.train_token_ids[ids], "attention_mask": self.train_attention_mask[ids]}

  def train_targets(self, ids=slice(None)):
    """labels i32[B], or {'intent': i32[B], 'slots': i32[B, L]} with token labels."""
    return self._targets("train", ids)

  def train_batch(self, ids) -> dict:
    """The train batch of examples `ids` (i64[B], or [M, B] for an ensemble): {'inputs',
    'labels'} (see train_inputs/targets), cut to `trimmed_length(ids)` positions when
    `trim_multiple` is set."""
    inputs, labels = self.train_inputs(ids), self.train_targets(ids)
    if not self.trim_multiple:
      return {"inputs": inputs, "labels": labels}
    inputs, labels = cut_to_length(inputs, labels, self.trimmed_length(ids))
    return {"inputs": inputs, "labels": labels}

  def trimmed_length(self, ids) -> int:
    """The longest of examples `ids` (real tokens; masks are right-padded), rounded up to a
    multiple of `trim_multiple`, at most max_length."""
    longest = int(self.train_attention_mask[ids].sum(-1).max())
    return int(rounded_length(longest, self.trim_multiple, self.max_length))

  def test_batch(self, ids) -> dict:
    return {"inputs": {"token_ids": self.test_token_ids[ids],
                       "attention_mask": self.test_attention_mask[ids]},
            "labels": self._targets("test", ids)}

  def _targets(self, split: str, ids):
    labels = getattr(self, f"{split}_labels")[ids].astype(np.int32)
    tokens = getattr(self, f"{split}_token_labels")
    if tokens is None:
      return labels
    return {"intent": labels, "slots": tokens[ids].astype(np.int32)}

  def replace(self, **changes) -> "TextDataset":
    return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- reading


def cut_to_length(inputs: dict, labels, length: int) -> tuple[dict, object]:
  """A right-padded text batch's inputs ({'token_ids', 'attention_mask'}: i32[..., L]) and
  labels (i32[...], or {'intent': i32[...], 'slots': i32[..., L]}) cut to their first
  `length` positions (the caller makes sure the cut positions are padding)."""
  inputs = {k: v[..., :length] for k, v in inputs.items()}
  if isinstance(labels, dict):
    labels = {**labels, "slots": labels["slots"][..., :length]}
  return inputs, labels


def rounded_length(lengths, multiple: int, max_length: int) -> np.ndarray:
  """i64[...]: `lengths` (numbers of real tokens) rounded up to a multiple of `multiple`,
  at most `max_length`."""
  return np.minimum(max_length, -(-np.asarray(lengths, np.int64) // multiple) * multiple)


def length_buckets(attention_mask: np.ndarray, multiple: int,
                   batch_size: int) -> list[tuple[int, np.ndarray]]:
  """[(length, i64[n] example ids)] for scoring right-padded text (mask i32[N, L]) in
  chunks of `batch_size` with fewer padded positions: the examples sorted by real length
  (stable), cut into chunks of batch_size, each chunk's length its longest example rounded
  up to `multiple` (at most L); consecutive chunks of one length form one bucket. So every
  bucket but the last holds a multiple of batch_size ids (only one chunk in all is
  short), a bucket's inputs can be cut to its length (the cut positions are padding of
  every example in it), and the buckets' ids partition range(N)."""
  if multiple <= 0 or batch_size <= 0:
    raise ValueError(f"length buckets need a positive multiple and batch size, got "
                     f"{multiple} and {batch_size}")
  mask = np.asarray(attention_mask)
  real = mask.sum(-1)
  order = np.argsort(real, kind="stable")
  buckets: list[tuple[int, list]] = []
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    # Sorted ascending: the chunk's last example is its longest.
    length = int(rounded_length(real[chunk[-1]], multiple, mask.shape[1]))
    if buckets and buckets[-1][0] == length:
      buckets[-1][1].append(chunk)
    else:
      buckets.append((length, [chunk]))
  return [(length, np.concatenate(chunks)) for length, chunks in buckets]


class _Files:
  """Read access to the files of a folder or a .tar/.tar.gz archive, by relative path."""

  def __init__(self, path: str):
    self.path = path
    if os.path.isdir(path):
      self._files = {}
      for root, _, names in os.walk(path):
        for n in names:
          full = os.path.join(root, n)
          self._files[os.path.relpath(full, path).replace(os.sep, "/")] = full
      self._tar = None
    elif os.path.isfile(path) and tarfile.is_tarfile(path):
      self._tar = tarfile.open(path)
      self._files = {m.name.lstrip("./"): m for m in self._tar.getmembers() if m.isfile()}
    elif os.path.exists(path):
      raise DataError(f"{path} is neither a folder nor a .tar/.tar.gz archive; pass the "
                      "folder of the data set or an archive of it")
    else:
      raise DataError(f"text data {path} not found; pass --data_dir pointing to the data "
                      "set's folder or a .tar/.tar.gz archive of it")

  def find_root(self, marker: str, subset: Optional[str]) -> str:
    """The prefix under which `marker` (e.g. 'train/seq.in') lives; `subset` picks one of
    several data sets in one archive (e.g. 'snips' in nlp/{atis,snips})."""
    roots = sorted(p[:-len(marker)] for p in self._files if p == marker or p.endswith("/" + marker))
    if subset:
      roots = [r for r in roots if r.rstrip("/").split("/")[-1] == subset]
    if not roots:
      what = f" for data set {subset!r}" if subset else ""
      raise DataError(f"no {marker}{what} in {self.path}; expected the layout "
                      f"<split>/seq.in, seq.out, label (joint NLU) or <split>.tsv (sentence "
                      f"TSV){'; check --text_subset' if subset else ''}")
    if len(roots) > 1:
      names = [r.rstrip("/").split("/")[-1] or "." for r in roots]
      raise DataError(f"{self.path} holds several data sets ({', '.join(names)}); choose one "
                      "with --text_subset")
    return roots[0]

  def exists(self, rel: str) -> bool:
    return rel in self._files

  def lines(self, rel: str) -> list:
    if rel not in self._files:
      raise DataError(f"missing file {rel} in {self.path}; every split needs it")
    if self._tar is None:
      with open(self._files[rel], "rb") as f:
        data = f.read()
    else:
      data = self._tar.extractfile(self._files[rel]).read()
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{rel} in {self.path} is not UTF-8 text ({e})") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
      lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    if not lines:
      raise DataError(f"{rel} in {self.path} is empty; it needs one example per line")
    return lines

  def close(self):
    if self._tar is not None:
      self._tar.close()


def read_joint_nlu(path: str, subset: Optional[str] = None,
                   splits: Sequence[str] = ("train", "test")) -> RawText:
  """Reads the joint-NLU layout (see the module docstring) from a folder or archive."""
  files = _Files(path)
  try:
    root = files.find_root("train/seq.in", subset)
    out = {}
    for split in splits:
      words_lines = files.lines(f"{root}{split}/seq.in")
      tag_lines = files.lines(f"{root}{split}/seq.out")
      label_lines = files.lines(f"{root}{split}/label")
      if not len(words_lines) == len(tag_lines) == len(label_lines):
        raise DataError(f"{root}{split}: seq.in has {len(words_lines)} lines, seq.out "
                        f"{len(tag_lines)}, label {len(label_lines)}; they must match line "
                        "for line")
      words, tags = [], []
      for i, (w, t) in enumerate(zip(words_lines, tag_lines), start=1):
        w, t = w.split(), t.split()
        if len(w) != len(t):
          raise DataError(f"{root}{split}/seq.out line {i} has {len(t)} tags for {len(w)} "
                          f"words in seq.in; give exactly one BIO tag per word")
        if not w:
          raise DataError(f"{root}{split}/seq.in line {i} is empty; every example needs words")
        words.append(w)
        tags.append(t)
      out[split] = RawTextSplit(words, [s.strip() for s in label_lines], tags)
    label_names = _label_file(files, f"{root}intent_label.txt")
    tag_names = _label_file(files, f"{root}slot_label.txt")
    name = root.rstrip("/").split("/")[-1] or os.path.basename(path.rstrip("/")).split(".")[0]
    return RawText(name, out, label_names, tag_names, source=path)
  finally:
    files.close()


def read_sentence_tsv(path: str, subset: Optional[str] = None,
                      splits: Sequence[str] = ("train", "test")) -> RawText:
  """Reads `<split>.tsv` files with the header `sentence<TAB>label`."""
  files = _Files(path)
  try:
    root = files.find_root("train.tsv", subset)
    out = {}
    for split in splits:
      rel = f"{root}{split}.tsv"
      lines = files.lines(rel)
      header = lines[0].split("\t")
      if header[:2] != ["sentence", "label"]:
        raise DataError(f"{rel}: the first line must be the header 'sentence<TAB>label', got "
                        f"{lines[0][:60]!r}")
      words, labels = [], []
      for i, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if len(cols) < 2:
          raise DataError(f"{rel} line {i} has no TAB-separated label; write "
                          "'sentence<TAB>label'")
        if not cols[0].split():
          raise DataError(f"{rel} line {i} has an empty sentence")
        words.append(cols[0].split())
        labels.append(cols[1].strip())
      if not labels:
        raise DataError(f"{rel} has a header but no examples")
      out[split] = RawTextSplit(words, labels)
    name = root.rstrip("/").split("/")[-1] or os.path.basename(path.rstrip("/")).split(".")[0]
    return RawText(name, out, source=path)
  finally:
    files.close()


def _label_file(files: _Files, rel: str) -> Optional[tuple]:
  if not files.exists(rel):
    return None
  names = tuple(s.strip() for s in files.lines(rel) if s.strip())
  if len(set(names)) != len(names):
    raise DataError(f"{rel} lists a label twice; give each label once")
  return names


def read_text(path: str, layout: str = "auto", subset: Optional[str] = None) -> RawText:
  """Reads `path` in `layout` ('joint_nlu', 'tsv' or 'auto': whichever files are there)."""
  if layout == "joint_nlu":
    return read_joint_nlu(path, subset)
  if layout == "tsv":
    return read_sentence_tsv(path, subset)
  try:
    return read_joint_nlu(path, subset)
  except DataError as e:
    if "no train/seq.in" not in str(e):
      raise
  return read_sentence_tsv(path, subset)


def label_vocabulary(train_labels: Sequence[str], listed: Optional[tuple], what: str,
                     specials: tuple = (UNK_LABEL,)) -> tuple:
  """The label vocabulary: `listed` (a label file) if given, else specials + sorted train
  labels. A train label missing from a label file is an error (the file is wrong)."""
  if listed is None:
    return tuple(specials) + tuple(sorted(set(train_labels) - set(specials)))
  if UNK_LABEL not in listed:
    listed = (UNK_LABEL,) + tuple(listed)
  missing = sorted(set(train_labels) - set(listed))
  if missing:
    raise DataError(f"{what} does not list the train labels {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}; fix the label file or delete it "
                    "(the vocabulary is then built from train)")
  return tuple(listed)


def label_ids(labels: Sequence[str], vocab: tuple, seen: set) -> tuple[np.ndarray, int]:
  """i32 ids of `labels`; labels outside `vocab` or never seen in train -> UNK. Returns
  (ids, how many went to UNK)."""
  index = {name: i for i, name in enumerate(vocab)}
  unk = index[UNK_LABEL]
  ids = np.array([index[s] if s in index and s in seen else unk for s in labels], np.int32)
  return ids, int(sum(1 for s in labels if s not in index or s not in seen))


def _take(dataset: TextDataset, split: str, order: np.ndarray) -> dict:
  changes = {f"{split}_{k}": getattr(dataset, f"{split}_{k}")[order]
             for k in ("token_ids", "attention_mask", "labels")}
  if dataset.has_token_labels:
    changes[f"{split}_token_labels"] = getattr(dataset, f"{split}_token_labels")[order]
  return changes


def sort_text_by_class(dataset: TextDataset) -> TextDataset:
  """Both splits stably sorted by sequence label (ties keep the file order)."""
  train = np.argsort(dataset.train_labels, kind="stable")
  test = np.argsort(dataset.test_labels, kind="stable")
  return dataset.replace(**_take(dataset, "train", train), **_take(dataset, "test", test),
                         example_order=f"stable sort by label of: {dataset.example_order}")


def class_balanced_text_subset(dataset: TextDataset, per_class: int, seed: int) -> TextDataset:
  """`per_class` random train examples of every class that occurs in train (in dataset
  order); classes with fewer examples are an error."""
  rng = np.random.RandomState(seed)
  kept = []
  for c in np.unique(dataset.train_labels):
    members = np.flatnonzero(dataset.train_labels == c)
    if len(members) < per_class:
      raise DataError(f"class {c} ({dataset.class_names[c]}) has {len(members)} train "
                      f"examples, fewer than --train_per_class={per_class}")
    kept.append(rng.choice(members, per_class, replace=False))
  kept = np.sort(np.concatenate(kept))
  return dataset.replace(**_take(dataset, "train", kept),
                         example_order=(f"class-balanced subset ({per_class}/class, seed "
                                        f"{seed}) of: {dataset.example_order}"))
