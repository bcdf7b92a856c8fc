"""Coresets published as DALI file lists (Dyn-Unc's `IN1K_75_file_list.txt` layout:
`/<class>/<file> <label>`, labels = class folders in lexicographic order) map to the image
folder's global train ids: checked by tags written into the pixels, not by the loader's own
ordering, and through the CLI's --example_ids_file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datadiet_jax.data.errors import DataError
from datadiet_jax.data.file_lists import ids_of_file_list, is_file_list
from datadiet_jax.data.image_folder import load_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Class folders created in a non-sorted order, files whose creation order is not their name
# order: the mapping must come from names, not from how the folder was written.
CLASSES = ("tulip", "daisy", "rose")
FILES_PER_CLASS = 5


def _image_folder(root):
  """train/ and test/ of 8x8 PNGs; train pixel [0, 0, 0] is a unique tag. Returns
  {(class, file name): tag} of the train images."""
  tags, tag = {}, 0
  for split in ("train", "test"):
    for c in CLASSES:
      os.makedirs(root / split / c)
      for k in (3, 0, 4, 1, 2)[:FILES_PER_CLASS]:
        name = f"img_{(7 * k + len(c)) % 10}{k}.png"
        pixels = np.full((8, 8, 3), 200, np.uint8)
        if split == "train":
          pixels[0, 0, 0] = tag
          tags[(c, name)] = tag
          tag += 1
        Image.fromarray(pixels).save(root / split / c / name)
  return tags


def _write_list(path, lines):
  path.write_text("".join(f"{line}\n" for line in lines))
  return str(path)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "flowers"
  return root, _image_folder(root)


def test_a_file_list_names_the_tagged_examples(folder, tmp_path):
  root, tags = folder
  lexicographic = {c: i for i, c in enumerate(sorted(CLASSES))}
  kept = [("rose", n) for c, n in tags if c == "rose"][:3] + [("daisy", n) for c, n in tags
                                                                if c == "daisy"][1:3]
  kept += [k for k in tags if k[0] == "tulip"][:1]
  path = _write_list(tmp_path / "coreset_file_list.txt",
                     [f"/{c}/{n} {lexicographic[c]}" for c, n in kept])
  assert is_file_list(path)
  ids = ids_of_file_list(path, str(root), num_train=len(tags))
  dataset = load_image_folder(str(root), use_cache=False)
  # The loaded example at each id carries the tag written into that listed file.
  assert dataset.train_images[ids, 0, 0, 0].tolist() == [tags[k] for k in kept]
  assert [dataset.class_names[y] for y in dataset.train_labels[ids]] == [c for c, _ in kept]
  # A tar of the same folder maps the same way.
  import tarfile
  with tarfile.open(tmp_path / "flowers.tar", "w") as tar:
    tar.add(root, arcname="flowers")
  np.testing.assert_array_equal(ids_of_file_list(path, str(tmp_path / "flowers.tar")), ids)
  ids_file = tmp_path / "ids.txt"
  ids_file.write_text("3\n1\n")
  assert not is_file_list(str(ids_file)) and not is_file_list(str(tmp_path / "ids.npy"))


@pytest.mark.parametrize("lines,message", [
    (["/rose/nope.png 2"], r"1 listed files are not train images of .* \(first: /rose/nope\.png\)"),
    (["/rose/{rose} 0"], r"1 labels are not the class folder's lexicographic rank"),
    (["/rose/{rose} 1", "/rose/{rose} 1"], r"1 files listed more than once"),
    (["/rose/{rose} 1", "rose {rose}"], r"line 2: 'rose .*' is not '/<class>/<file> <label>'"),
])
def test_a_bad_file_list_is_a_clear_error(folder, tmp_path, lines, message):
  root, tags = folder
  rose = next(n for c, n in tags if c == "rose")
  path = _write_list(tmp_path / "list.txt", [line.format(rose=rose) for line in lines])
  with pytest.raises(DataError, match=message):
    ids_of_file_list(path, str(root))


def test_a_file_list_of_a_subset_or_without_the_folder_is_refused(folder, tmp_path):
  root, tags = folder
  rose = next(n for c, n in tags if c == "rose")
  path = _write_list(tmp_path / "list.txt", [f"/rose/{rose} 1"])  # daisy 0, rose 1, tulip 2
  with pytest.raises(DataError, match=r"all 15 train images .* but the data set has 6"):
    ids_of_file_list(path, str(root), num_train=6)
  with pytest.raises(DataError, match="pass --data_dir"):
    ids_of_file_list(path, str(tmp_path / "absent"))


def test_cli_trains_the_file_lists_examples(folder, tmp_path, cli_env):
  """--example_ids_file=<file list> trains the same ids as an id file of the tagged
  examples (config.json records the ids' count and sha256)."""
  root, tags = folder
  kept = [k for k in sorted(tags, key=tags.get) if tags[k] % 2 == 0]  # 8 of 15
  lexicographic = {c: i for i, c in enumerate(sorted(CLASSES))}
  listing = _write_list(tmp_path / "kept_file_list.txt",
                        [f"/{c}/{n} {lexicographic[c]}" for c, n in kept])
  dataset = load_image_folder(str(root), use_cache=False)
  tag_at = dataset.train_images[:, 0, 0, 0].tolist()
  np.save(tmp_path / "kept_ids.npy", np.array([tag_at.index(tags[k]) for k in kept], np.int64))
  configs = []
  for name, ids_file in (("listed", listing), ("ids", str(tmp_path / "kept_ids.npy"))):
    workdir = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cifar", "--mode=train", "--dataset=image_folder",
         f"--data_dir={root}", f"--example_ids_file={ids_file}", f"--workdir={workdir}",
         "--model=small_cnn", "--num_filters=2", "--batch_size=4", "--num_steps=2",
         "--eval_every_steps=-1", "--save_steps=-1", "--noprogress", "--noaugment"],
        cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    configs.append(json.loads((workdir / "config.json").read_text())["example_ids"])
  assert configs[0] == configs[1] and configs[0]["num"] == 8
  # A file list for another data set is one clear error line, exit 2.
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.cifar", "--mode=train", "--dataset=digits",
       f"--example_ids_file={listing}", f"--workdir={tmp_path / 'digits'}", "--noprogress"],
      cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "is a file list" in proc.stderr and "--dataset=image_folder" in proc.stderr
  assert not os.path.exists(tmp_path / "digits")
