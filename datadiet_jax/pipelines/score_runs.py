"""Scoring the runs of a workdir: every score at a step, averaged over runs.

Writes <folder>/scores/<score>/step_<k>.npy (+ .std.npy, .runs.npy, .json sidecar), and
GraNd at initialisation over fresh inits to <folder>/scores/grand_init/step_0.npy.
An existing score file is kept (rerunning skips it) only if its sidecar records the same
checkpoints: the same dataset and example order, runs, run folders and seeds. Otherwise
(e.g. 3 runs asked where a 2-run file exists) it is recomputed, with a log line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Optional, Sequence

import jax
import numpy as np

from datadiet_jax.data.normalize import normalize
from datadiet_jax.scores import (eval_apply_fn, grand_at_init, load_stacked_variables,
                                 mean_forgetting_scores, save_scores, score_ensemble)
from datadiet_jax.scores.input_norm import input_norm_of
from datadiet_jax import artifacts
from datadiet_jax.scores.io import GRAND_INIT, canonical_score_name, score_paths
from datadiet_jax.scores.dynamics import mean_dynamics_scores
from datadiet_jax.scores.registry import DYNAMICS_SCORES, FORGETTING
from datadiet_jax.scores.shards import (fingerprint, merge_score_shards, save_score_shard,
                                        shard_paths, shards_present)
from datadiet_jax.sweep import processes
from datadiet_jax.sweep.partition import Worker
from datadiet_jax.train.dynamics import DEFINITIONS as DYNAMICS_DEFINITIONS
from datadiet_jax.train.loop import TrainConfig, build_run, run_paths
from datadiet_jax.train.outcome import DIVERGED
from datadiet_jax.train.metrics_writer import TENSORBOARD_DIR, write_once
from datadiet_jax.pipelines.train_runs import run_dir

log = logging.getLogger("datadiet_jax")


# Sidecar fields that identify what a score file was computed from.
_SOURCE_KEYS = ("dataset", "example_order", "num_train", "runs", "seeds", "run_dirs")


def _rows(tree, start: int, stop: int):
  """Examples start..stop-1 of inputs or targets: an array, or a dict of arrays (text)."""
  return jax.tree_util.tree_map(lambda a: a[start:stop], tree)


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


def check_runs_trained(workdir: str, runs: Sequence[int], step: int) -> None:
  """Raises ValueError unless every run of <workdir>/runs/ was trained (has checkpoints/)
  and none diverged at or before `step`."""
  for run in runs:
    checkpoints = run_paths(run_dir(workdir, run))["checkpoints"]
    if not os.path.isdir(checkpoints):
      raise ValueError(f"--mode=score: run {run} was never trained in {workdir} (no "
                       f"{checkpoints}); train it first "
                       "(--mode=train or --mode=train_score with the same flags)")
  check_not_diverged([run_dir(workdir, r) for r in runs], step)


def score_runs(folder: str, run_dirs: Sequence[str], seeds, dataset, model, state_like,
               step: int, score_names: Sequence[str], batch_size: int = 128,
               progress: bool = True, worker: Worker = Worker(),
               tensorboard: bool = True) -> dict:
  """Computes each score of `score_names` at `step`, averaged over the runs; returns paths.

  run_dirs: folders made by train_run (their checkpoints/ must hold `step`).
  seeds: (model seed, data seed) of each run, recorded in the sidecar.
  worker: with worker.count = K > 1, score only this worker's contiguous shard of the
    examples into a shard file (datadiet_jax/scores/shards.py); the worker that finds all
    K shards present merges them into the score file (or `--mode=merge_scores` does).
  The seconds each score took go into its sidecar ("seconds") and, with `tensorboard`,
  to <folder>/scores/tensorboard/ as `scoring_seconds/<score>` at `step`.
  """
  check_not_diverged(run_dirs, step)
  written = {}
  stacked = None
  start, stop = worker.example_range(dataset.num_train)
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
    if worker.count > 1 and os.path.exists(
        shard_paths(folder, name, step, worker.index, worker.count)["json"]):
      log.info("scores %s@%d: shard %d of %d exists, skipping", name, step, worker.index,
               worker.count)
      written[name] = _merge_if_complete(folder, name, step, worker)
      continue
    began = time.time()
    extra = {"bn_mode": "eval (BatchNorm running statistics)"}
    if name == FORGETTING:
      mean, std, per_run = mean_forgetting_scores(
          [run_paths(d)["checkpoints"] for d in run_dirs], step, dataset.num_train)
      extra = {"bn_mode": None, "note": "forgetting events during training (train-mode logits "
               "of augmented batches); +inf = never classified correctly"}
    elif name in DYNAMICS_SCORES:
      mean, std, per_run = mean_dynamics_scores(
          [run_paths(d)["checkpoints"] for d in run_dirs], step, name)
      extra = {"bn_mode": None, "note": DYNAMICS_DEFINITIONS[name] + "; accumulated during "
               "training from train-mode logits of augmented batches"}
    elif name == "input_norm":
      mean = input_norm_scores(dataset)
      std, per_run, extra = None, None, {"bn_mode": None}
    else:
      if stacked is None:
        checkpoint_dirs = [run_paths(d)["checkpoints"] for d in run_dirs]
        stacked = load_stacked_variables(checkpoint_dirs, step, state_like)
      if worker.count > 1:  # the exact checkpoints every shard must share
        extra = {**extra, "checkpoints": fingerprint(jax.tree_util.tree_leaves(stacked)),
                 "score_batch_size": int(batch_size)}
      mean, std, per_run = score_ensemble(name, eval_apply_fn(model), stacked,
                                          _rows(dataset.train_inputs(), start, stop),
                                          _rows(dataset.train_targets(), start, stop),
                                          batch_size, getattr(dataset, "mean", None),
                                          getattr(dataset, "std", None), progress)
    settings = {**sources, **extra}
    if worker.count > 1:
      if mean.shape[-1] != stop - start:  # whole-dataset scores (forgetting, input norm)
        settings["checkpoints"] = fingerprint([mean])
        mean, std, per_run = (None if a is None else a[..., start:stop]
                              for a in (mean, std, per_run))
      save_score_shard(folder, name, step, worker.index, worker.count, start, stop,
                       dataset.num_train, mean, std, per_run, settings)
      log.info("scores %s@%d: shard %d of %d (examples %d..%d) written", name, step,
               worker.index, worker.count, start, stop - 1)
      written[name] = _merge_if_complete(folder, name, step, worker)
      continue
    seconds = round(time.time() - began, 3)
    written[name] = save_scores(folder, name, step, mean, std, per_run,
                                {**settings, "seconds": seconds})
    _write_seconds(folder, name, step, seconds, tensorboard)
    log.info("scores %s@%d over %d runs -> %s", name, step, len(run_dirs), written[name])
  return written


def _merge_if_complete(folder: str, name: str, step: int, worker: Worker):
  """Merges the shards of name@step if all exist (returns the path), else logs and None.
  The processes of one jax.distributed program (worker.processes) first wait for each
  other's shards; process 0 merges, the others return the merged file's path."""
  if worker.processes:
    processes.barrier(f"score shards {name}@{step}")
    if not artifacts.is_primary_process():
      return score_paths(folder, name, step)["mean"]
  present = shards_present(folder, name, step, worker.count)
  if len(present) < worker.count:
    missing = sorted(set(range(worker.count)) - set(present))
    log.info("scores %s@%d: shards %s of %d still missing; the last worker to finish, or "
             "--mode=merge_scores, merges them", name, step, missing, worker.count)
    return None
  path = merge_score_shards(folder, name, step, worker.count)
  log.info("scores %s@%d: %d shards merged -> %s", name, step, worker.count, path)
  return path


def score_grand_at_init(folder: str, dataset, model, model_seeds: Sequence[int],
                        batch_size: int = 128, progress: bool = True,
                        worker: Worker = Worker(), tensorboard: bool = True) -> str:
  """GraNd at initialisation over len(model_seeds) random inits, saved as grand_init@0
  (its own name: GraNd at step 0 of trained runs is another file, scores/grand/step_0.npy).

  Member r is the model initialised from PRNGKey(model_seeds[r]), i.e. exactly step 0 of
  the run with that model seed (the 2021 step-0 restore bug cannot occur: no checkpoint
  is read at all). worker: as for score_runs (a shard of the examples, merged when all
  shards exist).
  """
  path = score_paths(folder, GRAND_INIT, 0)["mean"]
  seeds = [(s, None) for s in model_seeds]
  sources = _provenance(dataset, range(len(model_seeds)), seeds)
  if _up_to_date(path, sources, "grand_init"):
    log.info("scores grand_init exist (%s), skipping", path)
    return path
  began = time.time()
  start, stop = worker.example_range(dataset.num_train)
  if worker.count > 1 and os.path.exists(
      shard_paths(folder, GRAND_INIT, 0, worker.index, worker.count)["json"]):
    return _merge_if_complete(folder, GRAND_INIT, 0, worker)
  mean, std, per_run = grand_at_init(model, list(model_seeds),
                                     _rows(dataset.train_inputs(), start, stop),
                                     _rows(dataset.train_targets(), start, stop), batch_size,
                                     getattr(dataset, "mean", None),
                                     getattr(dataset, "std", None), progress)
  settings = _provenance(dataset, range(len(model_seeds)), seeds,
                         {"bn_mode": "eval (BatchNorm running statistics of the init)",
                          "note": "GraNd at initialisation: fresh inits, one per "
                                  "model seed, vmapped"})
  if worker.count > 1:
    settings["score_batch_size"] = int(batch_size)
    save_score_shard(folder, GRAND_INIT, 0, worker.index, worker.count, start, stop,
                     dataset.num_train, mean, std, per_run, settings)
    return _merge_if_complete(folder, GRAND_INIT, 0, worker)
  seconds = round(time.time() - began, 3)
  path = save_scores(folder, GRAND_INIT, 0, mean, std, per_run, {**settings, "seconds": seconds})
  _write_seconds(folder, "grand_init", 0, seconds, tensorboard)
  log.info("scores grand_init over %d inits -> %s", len(model_seeds), path)
  return path


def _write_seconds(folder: str, name: str, step: int, seconds: float, enabled: bool) -> None:
  write_once(os.path.join(folder, "scores", TENSORBOARD_DIR), step,
             {f"scoring_seconds/{name}": seconds}, enabled)


@dataclasses.dataclass(frozen=True)
class ScoreStageConfig:
  """The score stage of a workdir's runs (experiments' --mode=score).

  scores: computed from the runs' checkpoints at `step` (None: the runs' last step) and
    averaged over them (input_norm reads no checkpoint).
  grand_init_runs: also GraNd at initialisation over this many inits (the model seeds of
    runs 0..R-1), saved as scores/grand_init/step_0.npy.
  """

  scores: tuple[str, ...] = ("el2n", "grand")
  step: Optional[int] = None
  batch_size: int = 128
  grand_init_runs: int = 0

  def __post_init__(self):
    object.__setattr__(self, "scores", tuple(self.scores))
    for name in self.scores:
      canonical_score_name(name)  # raises a clear error for an unknown score
    if not self.scores and not self.grand_init_runs:
      raise ValueError("the score stage with no scores and grand_init_runs=0 scores "
                       "nothing; name scores (e.g. --scores=el2n,grand)")
    if self.batch_size < 1 or self.grand_init_runs < 0:
      raise ValueError(f"score batch size {self.batch_size} must be >= 1 and "
                       f"grand_init_runs {self.grand_init_runs} >= 0")

  @property
  def checkpointed(self) -> tuple[str, ...]:
    """The scores read from the runs' checkpoints (all but input_norm)."""
    return tuple(s for s in self.scores if s != "input_norm")

  def score_step(self, train: TrainConfig) -> int:
    return train.num_steps if self.step is None else self.step


def check_runs_restore(workdir: str, runs: Sequence[int], seeds_of, model, dataset, optimizer,
                       train: TrainConfig, config: ScoreStageConfig) -> None:
  """Every run's checkpoint at the score step restores (checksums checked); raises
  CheckpointError otherwise. Writes nothing (run it before a workdir is rewritten)."""
  from datadiet_jax.scores.checkpoints import load_variables
  if not config.checkpointed:
    return
  state_like, _, _, _ = build_run(model, dataset, optimizer, train, *seeds_of(0))
  for run in runs:
    load_variables(run_paths(run_dir(workdir, run))["checkpoints"], config.score_step(train),
                   state_like)


def score_stage(workdir: str, runs: Sequence[int], seeds_of, dataset, model, optimizer,
                train: TrainConfig, config: ScoreStageConfig, progress: bool = True,
                worker: Worker = Worker()) -> None:
  """Scores runs `runs` of <workdir>/runs/ (score_runs) and GraNd at init
  (score_grand_at_init) into <workdir>/scores/; train: the runs' TrainConfig."""
  if config.scores:
    seeds = [seeds_of(r) for r in runs]
    state_like, _, _, _ = build_run(model, dataset, optimizer, train, *seeds[0])
    score_runs(workdir, [run_dir(workdir, r) for r in runs], seeds, dataset, model,
               state_like, config.score_step(train), list(config.scores), config.batch_size,
               progress, worker, tensorboard=train.tensorboard)
  if config.grand_init_runs:
    model_seeds = [seeds_of(r)[0] for r in range(config.grand_init_runs)]
    score_grand_at_init(workdir, dataset, model, model_seeds, config.batch_size, progress,
                        worker, tensorboard=train.tensorboard)
