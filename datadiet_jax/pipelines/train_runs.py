"""Training N runs of one configuration with the original seed scheme."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os

import numpy as np

from datadiet_jax import artifacts
from datadiet_jax.sweep import lock as run_lock
from datadiet_jax.sweep.lock import RunLockedError, describe
from datadiet_jax.sweep.runner import Task
from datadiet_jax.train.ensemble_loop import (available_bytes, member_bytes, members_that_fit,
                                              train_ensemble)
from datadiet_jax.train.loop import RunResult, TrainConfig, build_run, is_finished, train_run
from datadiet_jax.train.optimizer import OptimizerConfig
from datadiet_jax.train.sharding import ensemble_mesh

log = logging.getLogger("datadiet_jax")


class ConfigMismatchError(ValueError):
  """A workdir that already holds runs of a different configuration."""


def train_task(name: str, run_dir: str, num_steps: int, *args, **kwargs) -> Task:
  """A Task that trains `train_run(run_dir, *args, **kwargs)` (its num_steps given apart)."""
  return Task(name, functools.partial(is_finished, run_dir, num_steps),
              functools.partial(train_run, run_dir, *args, **kwargs))


def run_dir(workdir: str, run: int) -> str:
  return os.path.join(workdir, "runs", f"run_{run}")


# Settings a config records only when they are not at their default (so workdirs made before
# the setting existed, or with the default, have no entry): a missing entry means this value.
IMPLICIT_DEFAULTS = {"conv_impl": "xla"}


def check_config(folder: str, config: dict, write: bool = True) -> None:
  """Checks `config` against folder/config.json, then writes it there (if `write`).

  Raises ConfigMismatchError if a setting recorded there differs. A setting missing from
  the record (a config.json written before that setting was recorded) is adopted: the
  record is rewritten with it, and a line is logged; except the IMPLICIT_DEFAULTS, whose
  missing entry means their default (an entry on one side only must equal it). write=False
  only checks (nothing is written: for validating a command before it touches the workdir).
  """
  path = os.path.join(folder, "config.json")
  config = _without_output_switches(_jsonable(config))
  previous = None
  if os.path.exists(path):
    try:
      previous = artifacts.read_json(path)
    except (OSError, ValueError) as error:
      raise ConfigMismatchError(f"{path} is unreadable ({error}); restore it or use a new "
                                "--workdir") from error
    differing = sorted(
        k for k in set(config) | set(previous)
        if (k in previous or k in IMPLICIT_DEFAULTS)
        and config.get(k, IMPLICIT_DEFAULTS.get(k)) != previous.get(k, IMPLICIT_DEFAULTS.get(k)))
    if differing:
      raise ConfigMismatchError(
          f"{folder} holds runs made with other settings ({', '.join(differing)} differ); "
          "rerun with the original flags or use a new --workdir")
  if not write or previous == config:
    return
  if previous is not None:
    log.info("%s: recording settings it did not record yet: %s", path,
             ", ".join(sorted(set(config) - set(previous))))
  artifacts.write_json(path, config)


def run_config(dataset, model_name: str, num_filters, dtype: str,
               optimizer: OptimizerConfig, train: TrainConfig, seeds: dict | None = None,
               **extra) -> dict:
  """Every setting that shapes the runs of a workdir (config.json): data (name, size, example
  order), model, optimizer, training config, the seeds (`seeds`: e.g. {'model_seed': 42,
  'data_seed': 4242, 'seed_stride': 424242}) and `extra` (e.g. label noise, text settings).
  Optimizer fields at the defaults of the SGD recipe that predate them (optimizer,
  warmup_steps, total_steps) are left out, so older workdirs still resume."""
  opt = dataclasses.asdict(optimizer)
  for key, default in (("optimizer", "sgd"), ("warmup_steps", 0), ("total_steps", 0)):
    if opt.get(key) == default:
      opt.pop(key)
  return {"dataset": dataset.name, "num_train": dataset.num_train,
          "example_order": dataset.example_order, "model": model_name,
          "num_filters": num_filters, "dtype": dtype, "optimizer": opt,
          "train": dataclasses.asdict(train), **(seeds or {}), **extra}


def train_runs(folder: str, runs, seeds_of, model, dataset, optimizer: OptimizerConfig,
               train: TrainConfig, example_ids=None, progress=True, stop_after_step=None,
               mesh=None, desc="run", lock_label="", ensemble_members: int = 1,
               ensemble_strategy: str = "auto") -> list[RunResult]:
  """Trains (resumes, skips) runs `runs` into folder/runs/run_<r>; returns their results.

  A run that another live process is training (its lock is held) is skipped with a log
  line and has no result. ensemble_members > 1 trains the runs in groups of that many
  members, each group in one jitted step (train/ensemble_loop.py); groups shrink to what
  fits in device memory; a group holds the lock of every member's run while it trains
  and leaves out (with a log line) the runs another live process holds.
  """
  runs = list(runs)
  if ensemble_members > 1 and len(runs) > 1:
    return train_ensemble_groups([run_dir(folder, r) for r in runs],
                                 [seeds_of(r) for r in runs], [f"{desc} {r}" for r in runs],
                                 model, dataset, optimizer, train, example_ids, progress,
                                 stop_after_step, mesh, ensemble_members, ensemble_strategy,
                                 lock_label)
  results = []
  for run in runs:
    model_seed, data_seed = seeds_of(run)
    try:
      result = train_run(run_dir(folder, run), model, dataset, optimizer, train, model_seed,
                         data_seed, example_ids=example_ids, progress=progress,
                         stop_after_step=stop_after_step, desc=f"{desc} {run}", mesh=mesh,
                         lock_label=lock_label)
    except RunLockedError as error:
      log.info("%s %d: skipped, %s is training it", desc, run, describe(error.holder))
      continue
    results.append(result)
  return results


def ensemble_group_size(requested: int, per_member_bytes: int, available: int) -> int:
  """min(requested, members that fit), with a warning line when memory forces a split."""
  fit = members_that_fit(per_member_bytes, available)
  if fit < requested:
    log.warning("%d ensemble members need about %.2f GB of state but %.2f GB are free; "
                "training groups of %d (lower --ensemble_members to silence this)", requested,
                requested * per_member_bytes / 1e9, available / 1e9, fit)
  return min(requested, fit)


def train_ensemble_groups(run_dirs, seeds, labels, model, dataset, optimizer: OptimizerConfig,
                          train: TrainConfig, example_ids=None, progress=True,
                          stop_after_step=None, mesh=None, members: int = 2,
                          strategy: str = "auto", lock_label: str = "") -> list[RunResult]:
  """Trains (resumes, skips) the runs run_dirs[i] (seeds[i] = (model seed, data seed);
  labels[i] names it in the log, e.g. 'random prune 50% seed 1') in ensemble groups of up
  to `members` (train/ensemble_loop.py); returns their results in the order of run_dirs.

  example_ids: None (all examples), one i32[K] shared by every run, or a list with one
    i32[K] (or None) per run: each member then draws its own batches from its own subset
    (the subsets must have one size K, so the members share steps per epoch).
  Finished runs are read, not grouped, so the groups hold only runs that still train. The
  group size shrinks (one warning line) to what fits in device memory. A group holds the
  lock of every member's run while it trains and leaves out (with a log line, no result)
  the runs another live process holds.
  """
  ids_of = (list(example_ids) if isinstance(example_ids, (list, tuple))
            else [example_ids] * len(run_dirs))
  results = {}
  todo = []
  for i, folder in enumerate(run_dirs):
    if is_finished(folder, train.num_steps):  # reads summary.json, as train_run does
      results[i], = train_ensemble([folder], model, dataset, optimizer, train, [seeds[i]],
                                   example_ids=[ids_of[i]], progress=False, desc=labels[i])
    else:
      todo.append(i)
  if not todo:
    return [results[i] for i in sorted(results)]
  state, _, _, _ = build_run(model, dataset, optimizer, train, *seeds[todo[0]], ids_of[todo[0]])
  per_member = member_bytes(state, None) + (6 * dataset.num_train if train.track_forgetting
                                            else 0)
  size = ensemble_group_size(members, per_member, available_bytes())
  for start in range(0, len(todo), size):
    with contextlib.ExitStack() as locks:
      group, held = [], {}
      for i in todo[start:start + size]:  # each member's run lock, as train_run takes it
        try:
          held[i] = locks.enter_context(run_lock.hold(run_dirs[i], lock_label))
          group.append(i)
        except RunLockedError as error:
          log.info("%s: skipped, %s is training it", labels[i], describe(error.holder))
      if not group:
        continue
      group_mesh = None if mesh is None else ensemble_mesh(len(group), mesh.devices)
      name = labels[group[0]] if len(group) == 1 else (
          f"{labels[group[0]]} .. {labels[group[-1]]} ({len(group)} members)")
      trained = train_ensemble([run_dirs[i] for i in group], model, dataset, optimizer, train,
                               [seeds[i] for i in group],
                               example_ids=[ids_of[i] for i in group], progress=progress,
                               stop_after_step=stop_after_step, desc=name, strategy=strategy,
                               mesh=group_mesh)
      for i, result in zip(group, trained):
        held[i].released_with = {"steps_trained": result.steps_trained,
                                 "final_step": result.final_step}
        results[i] = result
  return [results[i] for i in sorted(results)]

# TrainConfig fields that change what a run writes beside its results, or how it reads its
# batches, not the results: a workdir can be resumed with them changed (e.g.
# --tensorboard=false, --loader_workers=4).
OUTPUT_SWITCHES = ("tensorboard", "loader")


# TrainConfig fields recorded only when not at their default (workdirs made before them, or
# with the default, have no entry).
TRAIN_IMPLICIT_DEFAULTS = {"track_dynamics": [], "dynamics_window": 10}


def _without_output_switches(config: dict) -> dict:
  if isinstance(config.get("train"), dict):
    config = {**config, "train": {
        k: v for k, v in config["train"].items() if k not in OUTPUT_SWITCHES
        and not (k in TRAIN_IMPLICIT_DEFAULTS and v == TRAIN_IMPLICIT_DEFAULTS[k])}}
  return config


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj
