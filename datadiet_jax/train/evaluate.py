"""Test-set evaluation in fixed-size (padded) batches, so one compilation serves all.

Metrics: mean per-example loss and accuracy of the sequence label (any task); for joint
intent + slot data, also the slot span F1 (CoNLL-style, computed by `seqeval` on the
word-level BIO tags of the first sub-token of every word).
"""

from __future__ import annotations

import numpy as np

from datadiet_jax.data.batching import eval_batches


def padded_ids(start: int, stop: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(i32[batch_size] ids of [start, stop) padded with `start`, bool[batch_size] mask)."""
  idx = np.arange(start, start + batch_size)
  idx[stop - start:] = start
  return idx, np.arange(batch_size) < stop - start


def _run(eval_step, state, get_batch, num_examples: int, batch_size: int) -> dict:
  batch_size = min(batch_size, num_examples)
  loss_sum, correct_sum, count, slot_predictions = 0.0, 0, 0, []
  for start, stop in eval_batches(num_examples, batch_size):
    idx, mask = padded_ids(start, stop, batch_size)
    out = eval_step(state, {**get_batch(idx), "mask": mask})
    loss_sum += float(out["loss_sum"])
    correct_sum += int(out["correct_sum"])
    count += int(out["count"])
    if "slot_predictions" in out:
      slot_predictions.append(np.asarray(out["slot_predictions"])[:stop - start])
  result = {"loss": loss_sum / count, "accuracy": correct_sum / count}
  if slot_predictions:
    result["slot_predictions"] = np.concatenate(slot_predictions)
  return result


def evaluate_dataset(eval_step, state, dataset, batch_size: int) -> dict:
  """{'loss', 'accuracy'} on dataset's test split (+ 'slot_f1' with token labels)."""
  result = _run(eval_step, state, dataset.test_batch, dataset.num_test, batch_size)
  predictions = result.pop("slot_predictions", None)
  if predictions is not None:
    result["slot_f1"] = slot_f1(dataset.test_token_labels, predictions, dataset.tag_names)
  return result


def _tag(name: str) -> str:
  # PAD/UNK are not BIO tags; seqeval would read them as entity types, so they are 'O'.
  return name if name[:2] in ("B-", "I-") or name == "O" else "O"


def slot_tag_sequences(token_labels: np.ndarray, token_ids: np.ndarray, tag_names) -> list:
  """Word-level tag strings: token_ids at the labelled positions of token_labels (i32[N, L],
  IGNORE_ID elsewhere), one list per example."""
  labelled = token_labels >= 0
  return [[_tag(tag_names[t]) for t in row[m]] for row, m in zip(token_ids, labelled)]


def slot_f1(gold: np.ndarray, predicted: np.ndarray, tag_names) -> float:
  """Span F1 (seqeval, micro average over slot types) of predicted vs gold token tags."""
  from seqeval.metrics import f1_score  # pylint: disable=g-import-not-at-top
  y_true = slot_tag_sequences(gold, gold, tag_names)
  y_pred = slot_tag_sequences(gold, predicted, tag_names)
  return float(f1_score(y_true, y_pred))
