"""Training N runs of one configuration with the original seed scheme."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from datadiet_jax import artifacts
from datadiet_jax.train.loop import RunResult, TrainConfig, train_run
from datadiet_jax.train.optimizer import OptimizerConfig

log = logging.getLogger("datadiet_jax")


class ConfigMismatchError(ValueError):
  """A workdir that already holds runs of a different configuration."""


def run_dir(workdir: str, run: int) -> str:
  return os.path.join(workdir, "runs", f"run_{run}")


def check_config(folder: str, config: dict) -> None:
  """Writes folder/config.json, or checks that the one there matches `config`."""
  path = os.path.join(folder, "config.json")
  config = _jsonable(config)
  if os.path.exists(path):
    previous = artifacts.read_json(path)
    differing = sorted(k for k in set(config) | set(previous) if config.get(k) != previous.get(k))
    if differing:
      raise ConfigMismatchError(
          f"{folder} holds runs made with other settings ({', '.join(differing)} differ); "
          "rerun with the original flags or use a new --workdir")
  else:
    artifacts.write_json(path, config)


def run_config(dataset, model_name: str, num_filters, dtype: str,
               optimizer: OptimizerConfig, train: TrainConfig, extra: dict | None = None) -> dict:
  """The settings a workdir's runs were made with (config.json). Optimizer fields at the
  defaults of the SGD recipe that predate them (optimizer, warmup_steps, total_steps) are
  left out, so older workdirs still resume."""
  opt = dataclasses.asdict(optimizer)
  for key, default in (("optimizer", "sgd"), ("warmup_steps", 0), ("total_steps", 0)):
    if opt.get(key) == default:
      opt.pop(key)
  return {"dataset": dataset.name, "num_train": dataset.num_train,
          "example_order": dataset.example_order, "model": model_name,
          "num_filters": num_filters, "dtype": dtype, "optimizer": opt,
          "train": dataclasses.asdict(train), **(extra or {})}


def train_runs(folder: str, runs, seeds_of, model, dataset, optimizer: OptimizerConfig,
               train: TrainConfig, example_ids=None, progress=True, stop_after_step=None,
               mesh=None, desc="run") -> list[RunResult]:
  """Trains (resumes, skips) runs `runs` into folder/runs/run_<r>; returns their results."""
  results = []
  for run in runs:
    model_seed, data_seed = seeds_of(run)
    result = train_run(run_dir(folder, run), model, dataset, optimizer, train, model_seed,
                       data_seed, example_ids=example_ids, progress=progress,
                       stop_after_step=stop_after_step, desc=f"{desc} {run}", mesh=mesh)
    results.append(result)
  return results


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj
