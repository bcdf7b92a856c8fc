"""Scores of every training example under the model being trained (dynamic pruning).

One jitted, chunked, eval-mode pass over the dataset with the ensemble scoring code
(`make_ensemble_score_fn` + `apply_in_chunks`), the current variables as an ensemble of
one. The compiled function is cached per (score, model, normalization), so the many
re-scorings of a run, and the runs of a sweep, compile it once (per input length).

Text with `trim_multiple` > 0 (the data set's `--trim_padding_multiple`) is scored in
length buckets (data/text.py `length_buckets`): the examples sorted by real length, in
chunks of the batch size, each chunk cut (inputs and token labels) to its longest example
rounded up to the multiple. The cut positions are padding of every example in the chunk
(attention mask 0, no token label), so the scores equal the full-length pass's up to
float rounding (tests/test_text_train.py) while the encoder computes far fewer padded
positions.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from datadiet_jax.data.text import cut_to_length, length_buckets
from datadiet_jax.scores._common import eval_apply_fn
from datadiet_jax.scores.ensemble import DEFAULT_BATCH_SIZE, apply_in_chunks, make_ensemble_score_fn
from datadiet_jax.scores.registry import SCORE_NAMES
from datadiet_jax.scores.errors import ScoreError

_COMPILED: dict = {}


def _score_fn(score_name: str, model, mean, std) -> Callable:
  key = (score_name, repr(model), None if mean is None else np.asarray(mean).tobytes(),
         None if std is None else np.asarray(std).tobytes())
  if key not in _COMPILED:
    if len(_COMPILED) > 32:
      _COMPILED.clear()
    _COMPILED[key] = make_ensemble_score_fn(score_name, eval_apply_fn(model), mean, std)
  return _COMPILED[key]


def score_with_variables(score_name: str, model, variables: dict, images, labels, mean, std,
                         batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                         trim_multiple: int = 0) -> np.ndarray:
  """f32[N]: `score_name` of every example under one model's `variables`.

  variables: {'params', 'batch_stats'?} (e.g. train.state.model_variables(state));
  images: u8[N, H, W, C] with labels i32[N] and mean, std f32[C] on the 0..255 scale; or a
  dataset's `train_inputs()` / `train_targets()` (text: dicts of i32 arrays [N, L], labels
  i32[N] or {'intent': i32[N], 'slots': i32[N, L]}; mean, std None).
  trim_multiple: text only; > 0 scores in length buckets of this multiple (module doc).
  """
  if score_name not in SCORE_NAMES:
    raise ScoreError(f"score '{score_name}' cannot re-score during training; use one of "
                     f"{', '.join(SCORE_NAMES)}")
  stacked = jax.tree_util.tree_map(lambda x: x[None], variables)
  fn = _score_fn(score_name, model, mean, std)
  images = jax.tree_util.tree_map(np.asarray, images)
  labels = jax.tree_util.tree_map(np.asarray, labels)
  desc = f"re-score {score_name}"
  if not trim_multiple or not isinstance(images, dict):
    return apply_in_chunks(fn, stacked, images, labels, batch_size, progress, desc=desc)[0]
  scores = np.full(len(images["attention_mask"]), np.nan, np.float32)
  for length, ids in length_buckets(images["attention_mask"], trim_multiple, batch_size):
    bucket = jax.tree_util.tree_map(lambda x: x[ids], (images, labels))
    # exact_batch: every chunk has batch_size rows, one compile per bucket length.
    scores[ids] = apply_in_chunks(fn, stacked, *cut_to_length(*bucket, length), batch_size,
                                  progress, desc=f"{desc} (length {length})",
                                  exact_batch=True)[0]
  return scores
