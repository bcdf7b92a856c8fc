"""Scores of every training example under the model being trained (dynamic pruning).

One jitted, chunked, eval-mode pass over the dataset with the ensemble scoring code
(`make_ensemble_score_fn` + `apply_in_chunks`), the current variables as an ensemble of
one. The compiled function is cached per (score, model, normalization), so the many
re-scorings of a run, and the runs of a sweep, compile it once.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

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
                         batch_size: int = DEFAULT_BATCH_SIZE,
                         progress: bool = False) -> np.ndarray:
  """f32[N]: `score_name` of every example under one model's `variables`.

  variables: {'params', 'batch_stats'?} (e.g. train.state.model_variables(state));
  images: u8[N, H, W, C] with labels i32[N] and mean, std f32[C] on the 0..255 scale; or a
  dataset's `train_inputs()` / `train_targets()` (text: dicts of i32 arrays; mean, std None).
  """
  if score_name not in SCORE_NAMES:
    raise ScoreError(f"score '{score_name}' cannot re-score during training; use one of "
                     f"{', '.join(SCORE_NAMES)}")
  stacked = jax.tree_util.tree_map(lambda x: x[None], variables)
  fn = _score_fn(score_name, model, mean, std)
  return apply_in_chunks(fn, stacked, jax.tree_util.tree_map(np.asarray, images),
                         jax.tree_util.tree_map(np.asarray, labels),
                         batch_size, progress, desc=f"re-score {score_name}")[0]
