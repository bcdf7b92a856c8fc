"""Scoring the runs of a workdir: every score at a step, averaged over runs.

Writes <folder>/scores/<score>/step_<k>.npy (+ .std.npy, .runs.npy, .json sidecar).
Existing score files are kept (rerunning skips them).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from datadiet_jax.data.normalize import normalize
from datadiet_jax.scores import (eval_apply_fn, grand_at_init, load_stacked_variables,
                                 mean_forgetting_scores, save_scores, score_ensemble)
from datadiet_jax.scores.input_norm import input_norm_of
from datadiet_jax.scores.io import canonical_score_name, score_paths
from datadiet_jax.scores.registry import FORGETTING
from datadiet_jax.train.loop import run_paths

log = logging.getLogger("datadiet_jax")


def _provenance(dataset, runs, seeds, extra=None) -> dict:
  return {"dataset": dataset.name, "example_order": dataset.example_order,
          "num_train": dataset.num_train, "runs": list(runs),
          "seeds": [list(s) for s in seeds], **(extra or {})}


def input_norm_scores(dataset, batch_size: int = 1024) -> np.ndarray:
  """f32[N]: L2 norm of each normalized training image."""
  if not hasattr(dataset, "train_images"):
    raise ValueError("input_norm is the norm of a normalized image; a text data set has none "
                     "(drop input_norm from the scores)")
  out = []
  for start in range(0, dataset.num_train, batch_size):
    images = normalize(dataset.train_images[start:start + batch_size], dataset.mean, dataset.std)
    out.append(np.asarray(input_norm_of(images)))
  return np.concatenate(out).astype(np.float32)


def score_runs(folder: str, run_dirs: Sequence[str], seeds, dataset, model, state_like,
               step: int, score_names: Sequence[str], batch_size: int = 128,
               progress: bool = True) -> dict:
  """Computes each score of `score_names` at `step`, averaged over the runs; returns paths.

  run_dirs: folders made by train_run (their checkpoints/ must hold `step`).
  seeds: (model seed, data seed) of each run, recorded in the sidecar.
  """
  written = {}
  stacked = None
  for raw_name in score_names:
    name = canonical_score_name(raw_name)
    path = score_paths(folder, name, step)["mean"]
    if os.path.exists(path):
      log.info("scores %s@%d: exist (%s), skipping", name, step, path)
      written[name] = path
      continue
    extra = {"bn_mode": "eval (BatchNorm running statistics)"}
    if name == FORGETTING:
      mean, std, per_run = mean_forgetting_scores(
          [run_paths(d)["checkpoints"] for d in run_dirs], step, dataset.num_train)
      extra = {"bn_mode": None, "note": "forgetting events during training (train-mode logits "
               "of augmented batches); +inf = never classified correctly"}
    elif name == "input_norm":
      mean = input_norm_scores(dataset)
      std, per_run, extra = None, None, {"bn_mode": None}
    else:
      if stacked is None:
        checkpoint_dirs = [run_paths(d)["checkpoints"] for d in run_dirs]
        stacked = load_stacked_variables(checkpoint_dirs, step, state_like)
      mean, std, per_run = score_ensemble(name, eval_apply_fn(model), stacked,
                                          dataset.train_inputs(), dataset.train_targets(),
                                          batch_size, getattr(dataset, "mean", None),
                                          getattr(dataset, "std", None), progress)
    written[name] = save_scores(folder, name, step, mean, std, per_run,
                                _provenance(dataset, range(len(run_dirs)), seeds, extra))
    log.info("scores %s@%d over %d runs -> %s", name, step, len(run_dirs), written[name])
  return written


def score_grand_at_init(folder: str, dataset, model, model_seeds: Sequence[int],
                        batch_size: int = 128, progress: bool = True) -> str:
  """GraNd at initialisation over len(model_seeds) random inits, saved as grand@step 0.

  Member r is the model initialised from PRNGKey(model_seeds[r]), i.e. exactly step 0 of
  the run with that model seed (the 2021 step-0 restore bug cannot occur: no checkpoint
  is read at all).
  """
  path = score_paths(folder, "grand", 0)["mean"]
  if os.path.exists(path):
    log.info("scores grand@0 exist (%s), skipping", path)
    return path
  mean, std, per_run = grand_at_init(model, list(model_seeds), dataset.train_inputs(),
                                     dataset.train_targets(), batch_size,
                                     getattr(dataset, "mean", None),
                                     getattr(dataset, "std", None), progress)
  seeds = [(s, None) for s in model_seeds]
  path = save_scores(folder, "grand", 0, mean, std, per_run,
                     _provenance(dataset, range(len(model_seeds)), seeds,
                                 {"bn_mode": "eval (BatchNorm running statistics of the init)",
                                  "note": "GraNd at initialisation: fresh inits, one per "
                                          "model seed, vmapped"}))
  log.info("scores grand@0 over %d inits -> %s", len(model_seeds), path)
  return path
