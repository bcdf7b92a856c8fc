"""The training loop of one run: batches -> jitted step -> forgetting -> eval -> checkpoints.

Resumable: if the run's checkpoint folder holds a checkpoint, training continues from
the latest one and ends in exactly the state an uninterrupted run reaches (the batches
are a pure function of the step, the augmentation key is fold_in(key, step), and the
forgetting statistics and running train metrics are checkpointed with the state).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from datadiet_jax import artifacts
from datadiet_jax.checkpoint import RunCheckpoints, is_save_step
from datadiet_jax.data.batching import BatchSchedule
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.train.evaluate import evaluate
from datadiet_jax.train.forgetting import (ForgetStats, forgetting_scores, init_forget_stats,
                                           update_forget_stats)
from datadiet_jax.train import outcome as outcomes
from datadiet_jax.train.sharding import replicate, shard_batch
from datadiet_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from datadiet_jax.train.state import TrainState, create_train_state, num_params
from datadiet_jax.train.step import make_eval_step, make_train_step

log = logging.getLogger("datadiet_jax")

METRIC_FIELDS = ("step", "epoch", "lr", "train_loss", "train_accuracy", "test_loss",
                 "test_accuracy", "elapsed_s")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How long and how one run trains.

  num_steps: total updates (the original: 78,000 = 200 epochs of 390 steps).
  eval_every_steps / save_steps: 0 means once per epoch; -1 means only at step 0 and
    at the last step.
  early_save_steps / early_step: extra checkpoints every `early_save_steps` up to
    `early_step` (the original's "early" schedule); 0 switches it off.
  schedule_steps_per_epoch: the epoch length the lr schedule's epoch boundaries are
    counted in; 0 = this run's own. A pruned run on the original's equal *step* budget
    passes the full run's value, so its lr decays at the same steps as the full run
    (the original gave its decay boundaries in steps).
  """

  num_steps: int
  batch_size: int = 128
  eval_every_steps: int = 0
  eval_batch_size: int = 1024
  save_steps: int = 0
  early_save_steps: int = 0
  early_step: int = 0
  augment: bool = True
  track_forgetting: bool = True
  schedule_steps_per_epoch: int = 0

  def __post_init__(self):
    if self.batch_size <= 0:
      raise ValueError(f"batch size must be positive, got {self.batch_size}")
    if self.num_steps < 0:
      raise ValueError(f"number of steps must be >= 0, got {self.num_steps}")
    if self.eval_batch_size <= 0:
      raise ValueError(f"eval batch size must be positive, got {self.eval_batch_size}")


@dataclasses.dataclass(frozen=True)
class RunResult:
  run_dir: str
  final_step: int
  test_accuracy: float
  test_loss: float
  steps_trained: int  # steps actually run in this call (0 if it was already finished)
  seconds: float
  outcome: str = outcomes.OK  # see datadiet_jax/train/outcome.py
  diverged_step: Optional[int] = None
  diverged_loss: Optional[float] = None


def run_paths(run_dir: str) -> dict:
  return {"checkpoints": os.path.join(run_dir, "checkpoints"),
          "metrics": os.path.join(run_dir, "metrics.csv"),
          "summary": os.path.join(run_dir, "summary.json"),
          "forget_scores": os.path.join(run_dir, "forget_scores.npy")}


def is_finished(run_dir: str, num_steps: int) -> bool:
  """True if the run trained to `num_steps`, or diverged on its way there (a recorded
  outcome: rerunning reports it rather than resuming into it)."""
  path = run_paths(run_dir)["summary"]
  if not os.path.exists(path):
    return False
  summary = artifacts.read_json(path)
  if summary.get("outcome") == outcomes.DIVERGED:
    return summary.get("num_steps") == num_steps
  return summary.get("final_step") == num_steps


def build_run(model, dataset: Dataset, optimizer_config: OptimizerConfig,
              config: TrainConfig, model_seed: int, data_seed: int,
              example_ids: Optional[np.ndarray] = None):
  """The pieces of a run: (initial state, batch schedule, train_step, eval_step), unjitted."""
  ids = np.arange(dataset.num_train, dtype=np.int32) if example_ids is None else np.asarray(
      example_ids, np.int32)
  schedule = BatchSchedule(ids, config.batch_size, data_seed)
  tx = make_optimizer(optimizer_config, _schedule_epoch(config, schedule))
  state = create_train_state(model, tx, model_seed, data_seed, dataset.image_shape)
  train_step = make_train_step(model, tx, dataset.mean, dataset.std, augment=config.augment)
  eval_step = make_eval_step(model, dataset.mean, dataset.std)
  return state, schedule, train_step, eval_step


def train_run(run_dir: str, model, dataset: Dataset, optimizer_config: OptimizerConfig,
              config: TrainConfig, model_seed: int, data_seed: int,
              example_ids: Optional[np.ndarray] = None, progress: bool = True,
              stop_after_step: Optional[int] = None, desc: str = "train",
              mesh=None) -> RunResult:
  """Trains (or resumes, or skips if finished) one run, writing into `run_dir`.

  run_dir gets: checkpoints/<step>/ (Orbax), metrics.csv (one row per evaluation),
  summary.json, forget_scores.npy (f32[N] over the *whole* dataset; examples never
  trained on are never correct, hence inf).
  stop_after_step: end early after this step (simulates an interruption; for tests).
  mesh: a 1-D jax.sharding Mesh for data parallelism (None: default device).
  """
  start_time = time.time()
  paths = run_paths(run_dir)
  if is_finished(run_dir, config.num_steps):
    summary = artifacts.read_json(paths["summary"])
    if summary.get("outcome") == outcomes.DIVERGED:
      log.warning("%s: already ended, diverged at step %d (recorded in %s); delete %s to "
                  "train it again", desc, summary["diverged_step"], paths["summary"], run_dir)
      return _diverged_result(run_dir, summary["diverged_step"], summary["diverged_loss"], 0,
                              0.0)
    log.info("%s: already finished (%s), skipping", desc, paths["summary"])
    return RunResult(run_dir, config.num_steps, summary["test_accuracy"], summary["test_loss"],
                     0, 0.0, outcomes.outcome_of_summary(summary, dataset.num_classes))
  os.makedirs(run_dir, exist_ok=True)
  state, schedule, train_step, eval_step = build_run(model, dataset, optimizer_config, config,
                                                     model_seed, data_seed, example_ids)
  steps_per_epoch = schedule.steps_per_epoch
  eval_every = _interval(config.eval_every_steps, steps_per_epoch, config.num_steps)
  save_every = _interval(config.save_steps, steps_per_epoch, config.num_steps)
  lr_at = learning_rate_schedule(optimizer_config, _schedule_epoch(config, schedule))
  train_step, eval_step = _compiled(train_step, eval_step, model, optimizer_config,
                                    _schedule_epoch(config, schedule), dataset, config.augment)
  update_forget = _jit_update_forget
  forget = init_forget_stats(dataset.num_train) if config.track_forgetting else None

  checkpoints = RunCheckpoints(paths["checkpoints"])
  restored = checkpoints.restore_latest_intact(state, forget)  # None: a fresh run
  rows: list[dict] = []
  accum = {"loss_sum": 0.0, "correct_sum": 0.0, "count": 0}
  elapsed_before = 0.0
  if restored is not None:
    latest, state, forget, record = (restored.step, restored.state, restored.forget,
                                     restored.record)
    accum = record.get("train_accum", accum)
    elapsed_before = float(record.get("elapsed_s", 0.0))
    rows = [r for r in _read_rows(paths["metrics"]) if int(r["step"]) <= latest]
    log.info("%s: resuming from checkpoint step %d in %s", desc, latest, paths["checkpoints"])
  else:
    log.info("%s: %d params, %d examples, %d steps/epoch, %d steps", desc,
             num_params(state.params), len(schedule.example_ids), steps_per_epoch,
             config.num_steps)
    rows.append(_eval_row(0, steps_per_epoch, float(lr_at(1)), None, eval_step, state, dataset,
                          config, 0.0))
    artifacts.write_csv(paths["metrics"], rows, METRIC_FIELDS)
    checkpoints.save(0, state, forget, {"train_accum": accum, "elapsed_s": 0.0})

  if mesh is not None:
    state = replicate(state, mesh)
    forget = replicate(forget, mesh) if forget is not None else None
  first = int(state.step) + 1
  last = config.num_steps if stop_after_step is None else min(config.num_steps, stop_after_step)
  loss_sum, correct_sum = jnp.float32(accum["loss_sum"]), jnp.float32(accum["correct_sum"])
  count = int(accum["count"])
  bar = tqdm.tqdm(total=config.num_steps, initial=first - 1, desc=desc, unit="step",
                  disable=not progress, dynamic_ncols=True, mininterval=1.0)
  session_start = time.time()
  nonfinite = _NO_NONFINITE  # (first step with a non-finite loss or -1, its loss), on device
  divergence = None
  for step in range(first, last + 1):
    ids = schedule.batch_ids(step)
    batch = {"images": dataset.train_images[ids], "labels": dataset.train_labels[ids],
             "example_ids": ids}
    if mesh is not None:
      batch = shard_batch(batch, mesh)
    state, metrics = train_step(state, batch)
    nonfinite = _track_nonfinite(nonfinite, step, metrics["loss"])
    is_save = is_save_step(step, config.num_steps, save_every, config.early_save_steps,
                           config.early_step)
    if step % eval_every == 0 or step == last or is_save:
      # Synced only here (not every step); the exact first bad step is still known. Before a
      # save the parameters are checked too, so no checkpoint ever holds non-finite ones.
      divergence = _divergence(nonfinite, step, metrics["loss"], state if is_save else None)
      if divergence is not None:
        break
    if forget is not None:
      forget = update_forget(forget, metrics["example_ids"], metrics["correct"])
    loss_sum = loss_sum + metrics["loss"] * len(ids)
    correct_sum = correct_sum + metrics["accuracy"] * len(ids)
    count += len(ids)
    bar.update(1)
    elapsed = elapsed_before + time.time() - session_start
    if step % eval_every == 0 or step == config.num_steps:
      train_stats = (float(loss_sum) / max(count, 1), float(correct_sum) / max(count, 1))
      row = _eval_row(step, steps_per_epoch, float(lr_at(step)), train_stats, eval_step, state,
                      dataset, config, elapsed)
      rows.append(row)
      artifacts.write_csv(paths["metrics"], rows, METRIC_FIELDS)
      bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_accuracy']:.3f}")
      log.debug("%s: step %d epoch %.2f lr %.4g train loss %.4f acc %.4f | test loss %.4f "
               "acc %.4f | %.0fs", desc, step, row["epoch"], row["lr"], row["train_loss"],
               row["train_accuracy"], row["test_loss"], row["test_accuracy"], elapsed)
      loss_sum, correct_sum, count = jnp.float32(0.0), jnp.float32(0.0), 0
    if is_save:
      accum = {"loss_sum": float(loss_sum), "correct_sum": float(correct_sum), "count": count}
      checkpoints.save(step, state, forget, {"train_accum": accum, "elapsed_s": elapsed})
  bar.close()
  checkpoints.close()
  if divergence is not None:
    bad_step, bad_loss = divergence
    log.warning("%s", outcomes.divergence_message(desc, bad_step, bad_loss,
                                                  optimizer_config.learning_rate))
    artifacts.write_json(paths["summary"], {
        "outcome": outcomes.DIVERGED, "diverged_step": bad_step, "diverged_loss": bad_loss,
        "num_steps": config.num_steps, "final_step": bad_step, "test_accuracy": None,
        "test_loss": None, "model_seed": model_seed, "data_seed": data_seed,
        "num_train_examples": int(len(schedule.example_ids)), "steps_per_epoch": steps_per_epoch,
        "train_seconds": elapsed_before + time.time() - session_start})
    return _diverged_result(run_dir, bad_step, bad_loss, bad_step - first + 1,
                            time.time() - start_time)
  steps_trained = max(0, last - first + 1)
  final = rows[-1]
  outcome = outcomes.OK
  if last == config.num_steps:
    outcome = write_run_outputs(paths, config, forget, final, model_seed, data_seed, schedule,
                                dataset.num_classes, desc)
  return RunResult(run_dir, last, final["test_accuracy"], final["test_loss"], steps_trained,
                   time.time() - start_time, outcome)


def _diverged_result(run_dir, step, loss, steps_trained, seconds) -> RunResult:
  return RunResult(run_dir, step, float("nan"), float("nan"), steps_trained, seconds,
                   outcomes.DIVERGED, int(step), float(loss))


_NO_NONFINITE = (np.int32(-1), np.float32(0.0))


@jax.jit
def _track_nonfinite(tracker, step, loss):
  """(first step whose loss is non-finite or -1, that loss): one tiny fused op per step."""
  first_step, first_loss = tracker
  new = (first_step < 0) & ~jnp.isfinite(loss)
  return jnp.where(new, step, first_step).astype(jnp.int32), jnp.where(new, loss, first_loss)


@jax.jit
def _params_finite(params):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(params)
                            if jnp.issubdtype(leaf.dtype, jnp.inexact)]))


def _divergence(tracker, step, loss, state=None) -> Optional[tuple[int, float]]:
  """(step, train loss) of the first non-finite loss so far, else, if `state` is given and
  this step's update made its parameters non-finite, (this step, its loss); else None."""
  first_step, first_loss = jax.device_get(tracker)
  if int(first_step) >= 0:
    return int(first_step), float(first_loss)
  if state is not None and not bool(_params_finite(state.params)):
    return int(step), float(loss)
  return None


def write_run_outputs(paths: dict, config: TrainConfig, forget: Optional[ForgetStats],
                      final: dict, model_seed: int, data_seed: int, schedule: BatchSchedule,
                      num_classes: int, desc: str) -> str:
  """The files of a finished run: forget_scores.npy (if tracked) and summary.json; returns
  the run's outcome (a warning line is logged for a failed one)."""
  outcome = outcomes.classify_outcome(final["test_loss"], num_classes)
  if outcome == outcomes.FAILED:
    log.warning("%s", outcomes.failed_message(desc, final["test_loss"], num_classes))
  if forget is not None:
    artifacts.write_npy(paths["forget_scores"], np.asarray(forgetting_scores(forget)))
  artifacts.write_json(paths["summary"], {
      "outcome": outcome, "num_steps": config.num_steps, "final_step": config.num_steps,
      "test_accuracy": final["test_accuracy"],
      "test_loss": final["test_loss"], "model_seed": model_seed, "data_seed": data_seed,
      "num_train_examples": int(len(schedule.example_ids)),
      "steps_per_epoch": schedule.steps_per_epoch, "train_seconds": final["elapsed_s"]})
  return outcome


def _schedule_epoch(config: TrainConfig, schedule: BatchSchedule) -> int:
  return config.schedule_steps_per_epoch or schedule.steps_per_epoch


_jit_update_forget = jax.jit(update_forget_stats, donate_argnums=0)
_COMPILED: dict = {}


def _compiled(train_step, eval_step, model, optimizer_config, steps_per_epoch, dataset, augment):
  """Jitted steps, shared by runs with the same model/optimizer/normalization, so a sweep of
  many runs compiles each distinct step once."""
  key = (repr(model), optimizer_config, steps_per_epoch, dataset.mean.tobytes(),
         dataset.std.tobytes(), augment)
  if key not in _COMPILED:
    if len(_COMPILED) > 32:
      _COMPILED.clear()
    _COMPILED[key] = (jax.jit(train_step, donate_argnums=0), jax.jit(eval_step))
  return _COMPILED[key]


def checkpoint_steps(config: TrainConfig, steps_per_epoch: int) -> list[int]:
  """The steps a run of `config` saves a checkpoint at (its save schedule)."""
  save_every = _interval(config.save_steps, steps_per_epoch, config.num_steps)
  return [s for s in range(config.num_steps + 1)
          if is_save_step(s, config.num_steps, save_every, config.early_save_steps,
                          config.early_step)]


def _interval(value: int, steps_per_epoch: int, num_steps: int) -> int:
  """0 -> once per epoch; -1 (or any negative) -> never (steps 0 and last only)."""
  if value == 0:
    return steps_per_epoch
  return value if value > 0 else num_steps + 1


def _eval_row(step, steps_per_epoch, lr, train_stats, eval_step, state, dataset, config,
              elapsed) -> dict:
  test = evaluate(eval_step, state, dataset.test_images, dataset.test_labels,
                  config.eval_batch_size)
  train_loss, train_acc = train_stats if train_stats else (float("nan"), float("nan"))
  return {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr,
          "train_loss": train_loss, "train_accuracy": train_acc, "test_loss": test["loss"],
          "test_accuracy": test["accuracy"], "elapsed_s": round(elapsed, 3)}


def _read_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in rows]


def restore_run_state(run_dir: str, step: int, model, dataset: Dataset,
                      optimizer_config: OptimizerConfig, config: TrainConfig, model_seed: int,
                      data_seed: int, example_ids=None) -> tuple[TrainState, Optional[ForgetStats]]:
  """Restores exactly `step` of a run (raises CheckpointError if absent or corrupt)."""
  state, _, _, _ = build_run(model, dataset, optimizer_config, config, model_seed, data_seed,
                             example_ids)
  forget = init_forget_stats(dataset.num_train) if config.track_forgetting else None
  checkpoints = RunCheckpoints(run_paths(run_dir)["checkpoints"])
  try:
    state, forget, _ = checkpoints.restore(step, state, forget)
  finally:
    checkpoints.close()
  return state, forget
