"""Test-set evaluation in fixed-size (padded) batches, so one compilation serves all."""

from __future__ import annotations

import numpy as np

from datadiet_jax.data.batching import eval_batches


def padded_batch(images: np.ndarray, labels: np.ndarray, start: int, stop: int,
                 batch_size: int) -> dict:
  """Slice [start, stop) padded with copies of the first row up to batch_size, with a mask."""
  n = stop - start
  idx = np.arange(start, start + batch_size)
  idx[n:] = start
  mask = np.arange(batch_size) < n
  return {"images": images[idx], "labels": labels[idx].astype(np.int32), "mask": mask}


def evaluate(eval_step, state, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> dict:
  """Returns {'loss': mean CE, 'accuracy': fraction correct} over all examples."""
  batch_size = min(batch_size, len(images))
  loss_sum, correct_sum, count = 0.0, 0, 0
  for start, stop in eval_batches(len(images), batch_size):
    out = eval_step(state, padded_batch(images, labels, start, stop, batch_size))
    loss_sum += float(out["loss_sum"])
    correct_sum += int(out["correct_sum"])
    count += int(out["count"])
  return {"loss": loss_sum / count, "accuracy": correct_sum / count}
