"""Scoring the runs of a workdir: every score at a step, averaged over runs.

Writes <folder>/scores/<score>/step_<k>.npy (+ .std.npy, .runs.npy, .json sidecar), and
GraNd at initialisation over fresh inits to <folder>/scores/grand_init/step_0.npy.
An existing score file is kept (rerunning skips it) only if its sidecar records the same
checkpoints: the same dataset and example order, runs, run folders and seeds. Otherwise
(e.g. 3 runs asked where a 2-run file exists) it is recomputed, with a log line.
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
from datadiet_jax import artifacts
from datadiet_jax.scores.io import GRAND_INIT, canonical_score_name, score_paths
from datadiet_jax.scores.registry import FORGETTING
from datadiet_jax.train.loop import run_paths
from datadiet_jax.train.outcome import DIVERGED

log = logging.getLogger("datadiet_jax")


# Sidecar fields that identify what a score file was computed from.
_SOURCE_KEYS = ("dataset", "example_order", "num_train", "runs", "seeds", "run_dirs")


def _provenance(dataset, runs, seeds, extra=None, run_dirs=None, folder=None) -> dict:
  record = {"dataset": dataset.name, "example_order": dataset.example_order,
            "num_train": dataset.num_train, "runs": list(runs),
            "seeds": [list(s) for s in seeds], **(extra or {})}
  if run_dirs is not None:
    record["run_dirs"] = [os.path.relpath(os.path.abspath(d), os.path.abspath(folder))
                          for d in run_dirs]
  return record


def _up_to_date(path: str, expected: dict, what: str) -> bool:
  """Whether the score file `path` exists and its sidecar records the sources `expected`
  (the keys of _SOURCE_KEYS present in it); logs why an existing file is recomputed."""
  if not os.path.exists(path):
    return False
  sidecar = path[:-len(".npy")] + ".json"
  try:
    record = artifacts.read_json(sidecar)
  except (OSError, ValueError):
    log.warning("scores %s: %s has no readable sidecar %s; recomputing", what, path, sidecar)
    return False
  expected = artifacts.jsonable(expected)
  # Keys a file does not record (older sidecars have no run_dirs) are not compared.
  differing = [k for k in _SOURCE_KEYS
               if k in expected and k in record and record[k] != expected[k]]
  if differing:
    log.warning("scores %s: %s was computed from other checkpoints (%s: %s there, %s now); "
                "recomputing", what, path, ", ".join(differing),
                "; ".join(str(record.get(k)) for k in differing),
                "; ".join(str(expected[k]) for k in differing))
    return False
  return True


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


def check_not_diverged(run_dirs: Sequence[str], step: int) -> None:
  """Raises ValueError if a run diverged at or before `step` (its summary.json says so):
  its checkpoints stop before the divergence, and scores of it would be meaningless."""
  for directory in run_dirs:
    path = run_paths(directory)["summary"]
    if not os.path.exists(path):
      continue
    summary = artifacts.read_json(path)
    if summary.get("outcome") == DIVERGED and summary["diverged_step"] <= step:
      raise ValueError(f"run {directory} diverged at step {summary['diverged_step']} (train "
                       f"loss {summary['diverged_loss']}), so it has no step-{step} model to "
                       "score; retrain with a lower --lr (or warm-up) in a new --workdir, or "
                       "score an earlier step")


def score_runs(folder: str, run_dirs: Sequence[str], seeds, dataset, model, state_like,
               step: int, score_names: Sequence[str], batch_size: int = 128,
               progress: bool = True) -> dict:
  """Computes each score of `score_names` at `step`, averaged over the runs; returns paths.

  run_dirs: folders made by train_run (their checkpoints/ must hold `step`).
  seeds: (model seed, data seed) of each run, recorded in the sidecar.
  """
  check_not_diverged(run_dirs, step)
  written = {}
  stacked = None
  for raw_name in score_names:
    name = canonical_score_name(raw_name)
    path = score_paths(folder, name, step)["mean"]
    if name == "input_norm":
      sources = _provenance(dataset, [], [])
    else:
      sources = _provenance(dataset, range(len(run_dirs)), seeds, run_dirs=run_dirs,
                            folder=folder)
    if _up_to_date(path, sources, f"{name}@{step}"):
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
    written[name] = save_scores(folder, name, step, mean, std, per_run, {**sources, **extra})
    log.info("scores %s@%d over %d runs -> %s", name, step, len(run_dirs), written[name])
  return written


def score_grand_at_init(folder: str, dataset, model, model_seeds: Sequence[int],
                        batch_size: int = 128, progress: bool = True) -> str:
  """GraNd at initialisation over len(model_seeds) random inits, saved as grand_init@0
  (its own name: GraNd at step 0 of trained runs is another file, scores/grand/step_0.npy).

  Member r is the model initialised from PRNGKey(model_seeds[r]), i.e. exactly step 0 of
  the run with that model seed (the 2021 step-0 restore bug cannot occur: no checkpoint
  is read at all).
  """
  path = score_paths(folder, GRAND_INIT, 0)["mean"]
  seeds = [(s, None) for s in model_seeds]
  sources = _provenance(dataset, range(len(model_seeds)), seeds)
  if _up_to_date(path, sources, "grand_init"):
    log.info("scores grand_init exist (%s), skipping", path)
    return path
  mean, std, per_run = grand_at_init(model, list(model_seeds), dataset.train_inputs(),
                                     dataset.train_targets(), batch_size,
                                     getattr(dataset, "mean", None),
                                     getattr(dataset, "std", None), progress)
  path = save_scores(folder, GRAND_INIT, 0, mean, std, per_run,
                     _provenance(dataset, range(len(model_seeds)), seeds,
                                 {"bn_mode": "eval (BatchNorm running statistics of the init)",
                                  "note": "GraNd at initialisation: fresh inits, one per "
                                          "model seed, vmapped"}))
  log.info("scores grand_init over %d inits -> %s", len(model_seeds), path)
  return path
