"""Text loaders (joint-NLU, TSV; folder or archive), label vocabularies and UNK labels,
tokenization and word -> sub-token label alignment, and bad input."""

import io
import os
import tarfile

import numpy as np
import pytest

from datadiet_jax.data import DataError, text, tokenize
from datadiet_jax.data.sources import load_text_dataset

NLP_TAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "nlp-text.tar.gz")
needs_tar = pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="shared nlp-text.tar.gz absent")


def _write(folder, files: dict):
  for rel, content in files.items():
    path = os.path.join(folder, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(content)
  return str(folder)


def _joint_files(**overrides):
  files = {
      "train/seq.in": "play jazz now\nbook a table for two\nplay rock\n",
      "train/seq.out": "O B-genre O\nO O O O B-party\nO B-genre\n",
      "train/label": "PlayMusic\nBookRestaurant\nPlayMusic\n",
      "test/seq.in": "play blues\nrate this book\n",
      "test/seq.out": "O B-genre\nO B-object O\n",
      "test/label": "PlayMusic\nRateBook\n",
  }
  files.update(overrides)
  return {k: v for k, v in files.items() if v is not None}


@needs_tar
@pytest.mark.parametrize("subset,layout,counts", [
    ("atis", "joint_nlu", {"train": 4478, "dev": 500, "test": 893}),
    ("snips", "joint_nlu", {"train": 13084, "dev": 700, "test": 700}),
    ("sst2", "tsv", {"train": 60614, "dev": 6735, "test": 872}),
])
def test_shared_split_counts(subset, layout, counts):
  read = text.read_joint_nlu if layout == "joint_nlu" else text.read_sentence_tsv
  raw = read(NLP_TAR, subset, splits=tuple(counts))
  assert {k: len(v) for k, v in raw.splits.items()} == counts
  if layout == "joint_nlu":
    for split in raw.splits.values():
      assert all(len(w) == len(t) for w, t in zip(split.words, split.tags))


@needs_tar
def test_atis_unseen_test_labels_map_to_unk():
  logged = []
  ds = load_text_dataset("joint_nlu", NLP_TAR, max_length=50, subset="atis",
                         log_fn=logged.append)
  assert ds.unknown_labels == {"train_labels": 0, "train_tags": 0, "test_labels": 5,
                               "test_tags": 6}
  unk = ds.class_names.index("UNK")
  assert int((ds.test_labels == unk).sum()) == 5
  assert int((ds.test_token_labels == ds.tag_names.index("UNK")).sum()) == 6
  assert any("5 test labels never occur in train" in line for line in logged)
  assert ds.truncated == {"train": 0, "test": 0}


def test_alignment_on_hand_written_examples(tmp_path):
  folder = _write(tmp_path / "d", _joint_files())
  ds = load_text_dataset("joint_nlu", folder, max_length=8)
  vocab = ds.class_names
  assert vocab == ("UNK", "BookRestaurant", "PlayMusic")  # no label file: UNK + sorted train
  assert ds.tag_names == ("PAD", "UNK", "B-genre", "B-party", "O")
  # word-level: [CLS] w1 w2 w3 [SEP] pad...; the tag of word k is at token k + 1.
  tag = {n: i for i, n in enumerate(ds.tag_names)}
  np.testing.assert_array_equal(
      ds.train_token_labels[0], [-100, tag["O"], tag["B-genre"], tag["O"], -100, -100, -100, -100])
  np.testing.assert_array_equal(ds.train_attention_mask[0], [1, 1, 1, 1, 1, 0, 0, 0])
  assert ds.train_labels.tolist() == [2, 1, 2]
  # test: 'RateBook' and 'B-object' never occur in train -> UNK, counted.
  assert ds.test_labels.tolist() == [2, 0]
  assert ds.test_token_labels[1, 2] == tag["UNK"]
  assert ds.unknown_labels["test_labels"] == 1 and ds.unknown_labels["test_tags"] == 1
  # 'rate', 'this', 'book' unseen by the train vocabulary -> [UNK] id 1 ('book' is seen).
  tok = ds.test_token_ids[1]
  assert tok[0] == 2 and tok[1] == 1 and tok[2] == 1 and tok[3] != 1 and tok[4] == 3


def test_wordpiece_alignment_first_subtoken_carries_the_tag(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "jazz", "##y",
                              "music", "new", "york", "'", "s"]) + "\n")
  tokenizer = tokenize.wordpiece_tokenizer(str(vocab), lowercase=True)
  words = [["Play", "jazzy", "New", "York's"]]
  tags = [np.array([10, 11, 12, 13])]
  ids, mask, labels, truncated = tokenize.encode(tokenizer, words, 12, tags)
  # [CLS] play jazz ##y new york ' s [SEP] pad pad pad
  assert ids[0].tolist() == [2, 4, 5, 6, 8, 9, 10, 11, 3, 0, 0, 0]
  assert labels[0].tolist() == [-100, 10, 11, -100, 12, 13, -100, -100, -100, -100, -100, -100]
  assert mask[0].tolist() == [1] * 9 + [0] * 3
  assert truncated == 0
  # Truncation: 6 tokens keep [CLS] play jazz ##y new [SEP]; York's loses its tag.
  ids, _, labels, truncated = tokenize.encode(tokenizer, words, 6, tags)
  assert ids[0].tolist() == [2, 4, 5, 6, 8, 3]
  assert labels[0].tolist() == [-100, 10, 11, -100, 12, -100]
  assert truncated == 1


def test_archive_and_folder_read_the_same(tmp_path):
  files = _joint_files(**{"intent_label.txt": "UNK\nPlayMusic\nBookRestaurant\n"})
  folder = _write(tmp_path / "data" / "mini", files)
  archive = tmp_path / "mini.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname="nlp/mini")
  a = load_text_dataset("joint_nlu", folder, max_length=8)
  b = load_text_dataset("joint_nlu", str(archive), max_length=8, subset="mini")
  np.testing.assert_array_equal(a.train_token_ids, b.train_token_ids)
  np.testing.assert_array_equal(a.test_token_labels, b.test_token_labels)
  assert a.class_names == b.class_names == ("UNK", "PlayMusic", "BookRestaurant")  # file order


def test_tsv_and_sort_and_subset(tmp_path):
  folder = _write(tmp_path / "s", {
      "train.tsv": "sentence\tlabel\ngood film\t1\nbad film\t0\nfine\t1\nawful\t0\n",
      "test.tsv": "sentence\tlabel\ngood\t1\nodd\t2\n"})
  ds = load_text_dataset("text_tsv", folder, max_length=6, sort_by_class=True)
  assert ds.class_names == ("UNK", "0", "1") and not ds.has_token_labels
  assert ds.train_labels.tolist() == [1, 1, 2, 2]
  assert ds.test_labels.tolist() == [0, 2]  # stable sort of [2 ('1'), 0 (UNK '2')]
  sub = load_text_dataset("text_tsv", folder, max_length=6, train_per_class=1)
  assert sub.num_train == 2 and sorted(sub.train_labels.tolist()) == [1, 2]


@pytest.mark.parametrize("files,message", [
    (_joint_files(**{"test/seq.out": None}), "missing file test/seq.out"),
    (_joint_files(**{"train/seq.out": "O B-genre O\nO O O B-party\nO B-genre\n"}),
     "train/seq.out line 2 has 4 tags for 5 words"),
    (_joint_files(**{"test/label": ""}), "test/label .*is empty"),
    (_joint_files(**{"slot_label.txt": "PAD\nUNK\nO\n"}),
     "slot label file does not list the train labels B-genre, B-party"),
    (_joint_files(**{"train/label": "PlayMusic\nBookRestaurant\n"}),
     "seq.in has 3 lines, seq.out 3, label 2"),
])
def test_bad_joint_data_is_one_clear_error(tmp_path, files, message):
  folder = _write(tmp_path / "bad", files)
  with pytest.raises(DataError, match=message):
    load_text_dataset("joint_nlu", folder, max_length=8)


def test_not_found_and_wrong_layout(tmp_path):
  with pytest.raises(DataError, match="not found"):
    load_text_dataset("joint_nlu", str(tmp_path / "nope"), max_length=8)
  folder = _write(tmp_path / "t", {"train.tsv": "sentence\tlabel\na\t1\n"})
  with pytest.raises(DataError, match="no train/seq.in"):
    load_text_dataset("joint_nlu", folder, max_length=8)
  with pytest.raises(DataError, match="missing file test.tsv"):
    load_text_dataset("text_tsv", folder, max_length=8)


def test_tfds_text_without_prepared_data_is_a_clear_error(tmp_path):
  # Either tensorflow-datasets is absent (install hint) or glue/sst2 is not prepared in
  # the folder (build hint); never a download.
  with pytest.raises(DataError, match="tensorflow-datasets|not prepared|tfds build"):
    load_text_dataset("glue/sst2", str(tmp_path), max_length=8)
