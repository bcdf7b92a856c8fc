"""Data: in-memory `Dataset`s from every source, normalization, augmentation, batching."""

from datadiet_jax.data.dataset import Dataset, class_balanced_subset, sort_by_class
from datadiet_jax.data.errors import DataError
from datadiet_jax.data.sources import DATASET_NAMES, load_dataset

__all__ = ["Dataset", "DataError", "load_dataset", "DATASET_NAMES", "sort_by_class",
           "class_balanced_subset"]
