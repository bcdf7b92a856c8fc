"""The in-memory dataset every source returns, and the example-order conventions.

Scores are indexed by a dataset's *example order*, so the order is part of the
contract: every source documents its order, and `sort_by_class` is a stable sort.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A labelled image dataset held in memory as uint8 arrays.

  Attributes:
    name: short name (`cifar10`, `digits`, ...).
    train_images: u8[N, H, W, C].
    train_labels: i32[N].
    test_images: u8[M, H, W, C].
    test_labels: i32[M].
    class_names: C names, index = label.
    mean: f32[C] per-channel mean on the 0..255 scale, used by `normalize`.
    std: f32[C] per-channel std on the 0..255 scale.
    example_order: a human-readable statement of how train examples are ordered
      (scores and checkpoints' forgetting statistics are indexed by it).
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  example_order: str

  def __post_init__(self):
    for split, x, y in (("train", self.train_images, self.train_labels),
                        ("test", self.test_images, self.test_labels)):
      if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{self.name}: {split} images must be u8[N, H, W, C], got "
                         f"{x.dtype}{list(x.shape)}")
      if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{self.name}: {split} labels must be i32[{len(x)}], got {list(y.shape)}")
      if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
        raise ValueError(f"{self.name}: {split} labels must lie in [0, {len(self.class_names)})")
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(f"{self.name}: train and test images differ in shape")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return int(self.train_images.shape[0])

  @property
  def num_test(self) -> int:
    return int(self.test_images.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  @property
  def input_spec(self) -> tuple[int, int, int]:
    """One example's model input, for model init: the image shape (H, W, C)."""
    return self.image_shape

  def train_inputs(self, ids=slice(None)) -> np.ndarray:
    """u8[B, H, W, C] train images `ids` (the score functions' inputs, before normalization)."""
    return self.train_images[ids]

  def train_targets(self, ids=slice(None)) -> np.ndarray:
    """i32[B] train labels `ids`."""
    return self.train_labels[ids]

  def train_batch(self, ids) -> dict:
    """The train step's batch of examples `ids`: {'images': u8[B, H, W, C], 'labels': i32[B]}."""
    return {"images": self.train_images[ids], "labels": self.train_labels[ids]}

  def test_batch(self, ids) -> dict:
    """The eval step's batch of test examples `ids` (same keys as train_batch)."""
    return {"images": self.test_images[ids], "labels": self.test_labels[ids].astype(np.int32)}

  def replace(self, **changes) -> "Dataset":
    return dataclasses.replace(self, **changes)


def sort_by_class(dataset: Dataset) -> Dataset:
  """Orders both splits by label with a *stable* sort (ties keep the source order).

  The original Data Diet code sorted by class with numpy's default (unstable)
  quicksort, so the order inside a class depended on the numpy version; here it
  is the source order, which every source documents.
  """
  train_order = np.argsort(dataset.train_labels, kind="stable")
  test_order = np.argsort(dataset.test_labels, kind="stable")
  return dataset.replace(
      train_images=dataset.train_images[train_order],
      train_labels=dataset.train_labels[train_order],
      test_images=dataset.test_images[test_order],
      test_labels=dataset.test_labels[test_order],
      example_order=f"stable sort by label of: {dataset.example_order}")


def class_balanced_subset(dataset: Dataset, per_class: int, seed: int) -> Dataset:
  """Keeps `per_class` random train examples of every class (test split untouched).

  The kept examples stay in their relative dataset order, so the result's
  example order is a subsequence of the input's.
  """
  rng = np.random.RandomState(seed)
  kept = []
  for c in range(dataset.num_classes):
    members = np.flatnonzero(dataset.train_labels == c)
    if len(members) < per_class:
      raise ValueError(f"class {c} ({dataset.class_names[c]}) has {len(members)} train "
                       f"examples, fewer than --train_per_class={per_class}")
    kept.append(rng.choice(members, per_class, replace=False))
  kept = np.sort(np.concatenate(kept))
  return dataset.replace(
      train_images=dataset.train_images[kept],
      train_labels=dataset.train_labels[kept],
      example_order=(f"class-balanced subset ({per_class}/class, seed {seed}) of: "
                     f"{dataset.example_order}"))
