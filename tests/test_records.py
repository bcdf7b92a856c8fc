"""ArrayRecord conversion and the grain record source: round trip, order, bad shards."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("array_record")

from datadiet_jax.data import records, sources  # pylint: disable=g-import-not-at-top
from datadiet_jax.data.errors import DataError


@pytest.fixture(scope="module")
def digits():
  """Digits in the CLI's example order (--sort_by_class), as --mode=convert writes it."""
  return sources.load_dataset("digits", sort_by_class=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, digits):
  out = str(tmp_path_factory.mktemp("rec") / "digits_records")
  records.convert_dataset(digits, out, shard_size=500, progress=False)
  return out


def test_round_trip_every_example(converted, digits):
  manifest = records.read_manifest(converted)
  train = manifest["splits"]["train"]
  assert train["num_examples"] == digits.num_train
  assert [s["num_examples"] for s in train["shards"]] == [
      min(500, digits.num_train - lo) for lo in range(0, digits.num_train, 500)]
  source = records.RecordSource(converted, "train", verify_sha256=True)
  assert len(source) == digits.num_train
  for i in (0, 499, 500, digits.num_train - 1):
    ex = source[i]
    assert int(ex["ids"]) == i and int(ex["labels"]) == digits.train_labels[i]
    np.testing.assert_array_equal(ex["images"], digits.train_images[i])
  test = records.RecordSource(converted, "test")
  np.testing.assert_array_equal(test[len(test) - 1]["images"], digits.test_images[-1])


def test_batches_are_a_seeded_permutation_of_the_kept_ids(converted, digits):
  source = records.RecordSource(converted, "train")
  kept = np.arange(0, digits.num_train, 3)
  epoch = list(records.record_batches(source, 64, seed=7, ids=kept))
  assert len(epoch) == len(kept) // 64
  seen = np.concatenate([b["ids"] for b in epoch])
  assert len(np.unique(seen)) == len(seen) and np.isin(seen, kept).all()
  for b in epoch[:3]:  # every batch is the in-memory examples of its ids
    np.testing.assert_array_equal(b["images"], digits.train_images[b["ids"]])
    np.testing.assert_array_equal(b["labels"], digits.train_labels[b["ids"]])
  again = np.concatenate([b["ids"] for b in records.record_batches(source, 64, 7, ids=kept)])
  np.testing.assert_array_equal(seen, again)  # order is a function of (seed, epoch)
  other = np.concatenate([b["ids"] for b in records.record_batches(source, 64, 7, 1, kept)])
  assert not np.array_equal(seen, other)


def test_convert_into_non_empty_folder_and_killed_conversion(tmp_path, digits):
  out = tmp_path / "out"
  out.mkdir()
  (out / "x.txt").write_text("keep")
  with pytest.raises(DataError, match="not empty"):
    records.convert_dataset(digits, str(out), progress=False)
  assert os.listdir(out) == ["x.txt"]
  fresh = tmp_path / "fresh"
  stale = tmp_path / "fresh.partial-999999"  # what a killed conversion leaves
  stale.mkdir()
  (stale / "train-00000-of-00004.array_record").write_bytes(b"half")
  records.convert_dataset(digits, str(fresh), shard_size=1000, progress=False)
  assert not stale.exists()
  assert records.RecordSource(str(fresh), "train", verify_sha256=True)[5]["ids"] == 5


def test_missing_truncated_foreign_shard(tmp_path, digits, converted):
  import shutil
  def copy(name):
    dst = tmp_path / name
    shutil.copytree(converted, dst)
    return dst, json.loads((dst / records.MANIFEST).read_text())["splits"]["train"]["shards"]
  missing, shards = copy("missing")
  os.remove(missing / shards[1]["file"])
  with pytest.raises(DataError, match="shard missing"):
    records.RecordSource(str(missing), "train")
  truncated, shards = copy("truncated")
  path = truncated / shards[0]["file"]
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(DataError, match="truncated"):
    records.RecordSource(str(truncated), "train")
  foreign, shards = copy("foreign")  # shard 0 replaced by shard 1 of the same size class
  other = tmp_path / "other"
  records.convert_dataset(digits.replace(train_labels=(digits.train_labels + 1) % 10), str(other),
                          shard_size=500, progress=False)
  shutil.copy(other / shards[0]["file"], foreign / shards[0]["file"])
  with pytest.raises(DataError, match="sha256"):
    records.RecordSource(str(foreign), "train", verify_sha256=True)
  # One byte changed in a shard's block padding: every record still reads back intact (the
  # structural checks pass), and only the sha256 check (--verify_records) finds the change.
  flipped, shards = copy("flipped")
  path = flipped / shards[1]["file"]
  data = bytearray(path.read_bytes())
  data[int(len(data) * 0.7)] ^= 0xFF
  path.write_bytes(bytes(data))
  plain = sources.load_dataset("records", data_dir=str(flipped))
  np.testing.assert_array_equal(plain.train_images[500:1000], digits.train_images[500:1000])
  with pytest.raises(DataError, match=r"train-00001-of-00003\.array_record: sha256 differs"):
    sources.load_dataset("records", data_dir=str(flipped), verify_records=True)


def test_ids_outside_the_data_set(digits):
  with pytest.raises(DataError, match=r"2 ids outside the data set's \[0, 10\) \(first 10\)"):
    records.check_ids(np.array([0, 10, 11, 3]), 10, "kept.npy")
  np.testing.assert_array_equal(records.check_ids(np.array([9, 0]), 10, "k"), [9, 0])


def _cli(args):
  from absl import flags
  from experiments import cifar, common
  flags.FLAGS.unparse_flags()
  try:
    cifar.main(cifar.parse_flags(["experiments.cifar", *args]))
  except SystemExit as exit_:
    return exit_.code
  finally:
    common.setup_logging()
  return 0


def test_train_score_from_records_equals_in_memory_and_resumes_bit_identically(tmp_path,
                                                                               converted):
  """Training + EL2N scoring from the records folder give the in-memory path's scores bit for
  bit; a records run stopped after step 2 and resumed to 4 gives the uninterrupted ones (the
  batch order is the loop's pure function of (data seed, step), so no iterator state)."""
  from datadiet_jax.scores import load_scores
  base = ["--mode=train_score", "--scores=el2n", "--num_steps=4", "--batch_size=32",
          "--model=small_cnn", "--num_filters=2", "--noprogress", "--eval_every_steps=-1",
          "--save_steps=-1", "--notrack_forgetting"]
  memory, rec, resumed = (str(tmp_path / n) for n in ("memory", "records", "resumed"))
  assert _cli([*base, "--dataset=digits", f"--workdir={memory}"]) == 0
  records_args = [*base, "--dataset=records", f"--data_dir={converted}"]
  assert _cli([*records_args, f"--workdir={rec}"]) == 0
  assert _cli([*records_args, f"--workdir={resumed}", "--mode=train", "--stop_after_step=2"]) == 0
  assert _cli([*records_args, f"--workdir={resumed}"]) == 0
  expected = load_scores(memory, "el2n", 4)
  assert expected.shape == (1442,) and np.isfinite(expected).all()
  np.testing.assert_array_equal(load_scores(rec, "el2n", 4), expected)
  np.testing.assert_array_equal(load_scores(resumed, "el2n", 4), expected)


def test_example_ids_file_trains_the_subset_by_index(tmp_path, digits):
  """--example_ids_file trains the kept examples by global id without rewriting the data:
  its run equals a run on those examples written out as their own records folder, so its
  EL2N scores (over every example, keyed by global id) at the kept ids equal that run's
  scores, on the in-memory and the records path alike."""
  from datadiet_jax.scores import load_scores
  kept = np.random.default_rng(3).choice(digits.num_train, 600, replace=False)
  np.save(tmp_path / "kept_ids.npy", kept.astype(np.int32))
  subset = tmp_path / "subset_records"
  records.convert_dataset(digits.replace(train_images=digits.train_images[kept],
                                         train_labels=digits.train_labels[kept]),
                          str(subset), shard_size=250, progress=False)
  full = tmp_path / "full_records"
  records.convert_dataset(digits, str(full), shard_size=500, progress=False)
  base = ["--mode=train_score", "--scores=el2n", "--num_steps=5", "--batch_size=32",
          "--model=small_cnn", "--num_filters=2", "--noprogress", "--eval_every_steps=-1",
          "--save_steps=-1", "--notrack_forgetting", "--noaugment", "--score_batch_size=600"]
  ids_flag = f"--example_ids_file={tmp_path / 'kept_ids.npy'}"
  assert _cli([*base, "--dataset=digits", ids_flag, f"--workdir={tmp_path / 'mem'}"]) == 0
  assert _cli([*base, "--dataset=records", f"--data_dir={full}", ids_flag,
               f"--workdir={tmp_path / 'rec'}"]) == 0
  assert _cli([*base, "--dataset=records", f"--data_dir={subset}",
               f"--workdir={tmp_path / 'sub'}"]) == 0
  mem = load_scores(str(tmp_path / "mem"), "el2n", 5)
  assert mem.shape == (digits.num_train,)
  np.testing.assert_array_equal(load_scores(str(tmp_path / "rec"), "el2n", 5), mem)
  sub = load_scores(str(tmp_path / "sub"), "el2n", 5)
  np.testing.assert_allclose(mem[kept], sub, rtol=1e-6, atol=1e-7)
  summary = json.loads((tmp_path / "mem" / "runs" / "run_0" / "summary.json").read_text())
  assert summary["num_train_examples"] == 600
  config = json.loads((tmp_path / "mem" / "config.json").read_text())
  assert config["example_ids"]["num"] == 600


NLP_TAR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                        "nlp-text.tar.gz"))


@pytest.mark.skipif(not os.path.exists(NLP_TAR), reason="shared nlp-text.tar.gz absent")
def test_text_records_train_and_score_equal_the_in_memory_text_path(tmp_path):
  """SNIPS (joint intent + slot) converted by --mode=convert: token ids, masks, intents and
  slot tags read back equal the tokenized in-memory data set, and 3 training steps + EL2N
  from the records give the in-memory text path's scores and test loss bit for bit."""
  from datadiet_jax.scores import load_scores
  data = [f"--data_dir={NLP_TAR}", "--text_subset=snips", "--train_per_class=20",
          "--max_length=24"]
  tiny = ["--model=bert", "--max_length=24", "--bert_layers=1", "--bert_hidden=16",
          "--bert_heads=2", "--bert_intermediate=32", "--batch_size=8", "--eval_batch_size=350",
          "--noprogress", "--noaugment", "--eval_every_steps=-1", "--save_steps=-1",
          "--num_steps=3", "--mode=train_score", "--scores=el2n", "--optimizer=adamw",
          "--lr=1e-3", "--weight_decay=0.01"]
  out = tmp_path / "snips_records"
  assert _cli(["--mode=convert", "--dataset=joint_nlu", *data, f"--records_out={out}",
               "--records_shard_size=50", "--noprogress"]) == 0
  memory = sources.load_text_dataset("joint_nlu", NLP_TAR, 24, "snips", sort_by_class=True,
                                     train_per_class=20)
  back = records.load_text_records(str(out), verify_sha256=True)
  assert back.num_train == memory.num_train == 140  # 7 intents x 20 (no UNK examples)
  assert back.tag_names == memory.tag_names and back.class_names == memory.class_names
  for split in ("train", "test"):
    for field in ("token_ids", "attention_mask", "labels", "token_labels"):
      np.testing.assert_array_equal(getattr(back, f"{split}_{field}"),
                                    getattr(memory, f"{split}_{field}"))
  assert _cli(["--dataset=joint_nlu", *data, *tiny, f"--workdir={tmp_path / 'mem'}"]) == 0
  assert _cli(["--dataset=records", f"--data_dir={out}", *tiny,
               f"--workdir={tmp_path / 'rec'}"]) == 0
  expected = load_scores(str(tmp_path / "mem"), "el2n", 3)
  assert expected.shape == (memory.num_train,) and np.isfinite(expected).all()
  np.testing.assert_array_equal(load_scores(str(tmp_path / "rec"), "el2n", 3), expected)
  summary = lambda w: json.loads((tmp_path / w / "runs" / "run_0" / "summary.json").read_text())
  assert summary("rec")["test_loss"] == summary("mem")["test_loss"]


def _write_folder(root, shape, seed=0, gray=False, names=("b", "a", "c")):
  """An image folder of PNGs (classes out of order, file names out of numeric order)."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for split, count in (("train", 7), ("test", 3)):
    for c in names:
      os.makedirs(root / split / c, exist_ok=True)
      for k in range(count):
        pixels = rng.integers(0, 256, shape[:2] if gray else shape, np.uint8)
        Image.fromarray(pixels).save(root / split / c / f"{k * 7 % 10}_{k}.png")
  return root


@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
def test_streamed_folder_conversion_equals_converting_the_loaded_folder(tmp_path, gray):
  """convert_image_folder (one image in memory at a time; a directory, or an uncompressed tar
  read member by member) writes the very shards, labels and manifest that converting the
  in-memory load_image_folder + sort_by_class writes (mean/std: float32 rounding)."""
  import tarfile
  from datadiet_jax.data.dataset import sort_by_class
  from datadiet_jax.data.image_folder import load_image_folder
  folder = _write_folder(tmp_path / "pets", (9, 11, 3), gray=gray)
  with tarfile.open(tmp_path / "pets.tar", "w") as tar:
    tar.add(folder, arcname="pets")
  for source in ("pets", "pets.tar"):
    loaded = sort_by_class(load_image_folder(str(tmp_path / source), use_cache=False))
    assert loaded.image_shape == ((9, 11, 1) if gray else (9, 11, 3))
    reference = records.convert_dataset(loaded, str(tmp_path / f"memory_{source}"),
                                        shard_size=8, progress=False)
    out = str(tmp_path / f"streamed_{source}")
    streamed = records.convert_image_folder(str(tmp_path / source), out, shard_size=8,
                                            progress=False)
    np.testing.assert_allclose(streamed.pop("mean"), reference["mean"], rtol=1e-6)
    np.testing.assert_allclose(streamed.pop("std"), reference["std"], rtol=1e-6)
    assert streamed == {k: v for k, v in reference.items() if k not in ("mean", "std")}
    for split in ("train", "test"):
      for ours, theirs in zip(streamed["splits"][split]["shards"],
                              reference["splits"][split]["shards"]):
        assert ours["sha256"] == theirs["sha256"]  # the same bytes, record for record
    back = records.load_records(out)
    np.testing.assert_array_equal(back.train_images[:], loaded.train_images)
    np.testing.assert_array_equal(back.test_labels, loaded.test_labels)


def test_streamed_folder_conversion_refuses_mixed_sizes_and_writes_nothing(tmp_path):
  from PIL import Image
  folder = _write_folder(tmp_path / "pets", (9, 11, 3))
  Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(folder / "test" / "a" / "wide.png")
  with pytest.raises(DataError, match=r"wide.png is 9x12 but .* is 9x11; all images must have "
                                      "the same size"):
    records.convert_image_folder(str(folder), str(tmp_path / "out"), progress=False)
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(DataError, match="not found; pass --data_dir"):
    records.convert_image_folder(str(tmp_path / "nowhere"), str(tmp_path / "out"))
