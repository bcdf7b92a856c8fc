"""The training loop of one run: batches -> jitted step -> forgetting -> eval -> checkpoints.

With a subset policy (train/subset.py; dynamic pruning in datadiet_jax.prune.dynamic and
.soft) each epoch trains on the examples, with the loss weights, the policy plans for it;
the policy's state is checkpointed with the run, so resume stays exact.

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
from datadiet_jax.sweep import lock as run_lock
from datadiet_jax.train.evaluate import evaluate_dataset
from datadiet_jax.train.forgetting import (ForgetStats, forgetting_scores, init_forget_stats,
                                           update_forget_stats)
from datadiet_jax.train import outcome as outcomes
from datadiet_jax.train.metrics_writer import open_run_writer
from datadiet_jax.train.sharding import replicate, shard_batch
from datadiet_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from datadiet_jax.train.state import TrainState, create_train_state, model_variables, num_params
from datadiet_jax.train.step import make_eval_step, make_train_step
from datadiet_jax.train.tasks import task_for
from datadiet_jax.train.subset import (FixedSubset, SubsetPolicy, load_policy_state,
                                       save_policy_state)

log = logging.getLogger("datadiet_jax")

METRIC_FIELDS = ("step", "epoch", "lr", "train_loss", "train_accuracy", "test_loss",
                 "test_accuracy", "elapsed_s", "optimizer_steps", "train_examples",
                 "scored_examples", "score_seconds")


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
  tensorboard: also write metrics.csv's rows as TensorBoard scalars to
    <run dir>/tensorboard/ (an output switch: not part of a workdir's config check).
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
  tensorboard: bool = True

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
  """True if the run trained to `num_steps` (or, a run of a number of epochs whose length
  followed a subset policy, to the end of its step budget `num_steps`), or diverged on its
  way there (a recorded outcome: rerunning reports it rather than resuming into it)."""
  path = run_paths(run_dir)["summary"]
  if not os.path.exists(path):
    return False
  summary = artifacts.read_json(path)
  if summary.get("outcome") == outcomes.DIVERGED:
    return summary.get("num_steps") == num_steps
  return summary.get("final_step") == num_steps or summary.get("num_steps") == num_steps


def build_run(model, dataset: Dataset, optimizer_config: OptimizerConfig,
              config: TrainConfig, model_seed: int, data_seed: int,
              example_ids: Optional[np.ndarray] = None):
  """The pieces of a run: (initial state, batch schedule, train_step, eval_step), unjitted."""
  ids = np.arange(dataset.num_train, dtype=np.int32) if example_ids is None else np.asarray(
      example_ids, np.int32)
  schedule = BatchSchedule(ids, config.batch_size, data_seed)
  tx = make_optimizer(_with_total_steps(optimizer_config, config),
                      _schedule_epoch(config, schedule))
  state = create_train_state(model, tx, model_seed, data_seed, dataset.input_spec)
  task = task_for(dataset, config.augment)
  train_step = make_train_step(model, tx, task=task)
  eval_step = make_eval_step(model, task=task)
  return state, schedule, train_step, eval_step


def train_run(run_dir: str, *args, lock_label: str = "", **kwargs) -> RunResult:
  """Trains (or resumes, or skips if finished) one run, writing into `run_dir`.

  Arguments as for `_train_run` below. Holds the run's lock file (datadiet_jax/sweep/lock.py)
  while it trains, so two processes on one workdir never train the same run at once; raises
  sweep.lock.RunLockedError if another live process holds it. lock_label: who holds it
  (e.g. 'worker 1/4'), for the lock record and the log. In a multi-host run (one run trained
  by all jax processes together) the processes do not lock against each other.
  """
  if os.path.exists(run_paths(run_dir)["summary"]) or jax.process_count() > 1:
    return _train_run(run_dir, *args, **kwargs)
  with run_lock.hold(run_dir, lock_label) as lock:
    result = _train_run(run_dir, *args, **kwargs)
    lock.released_with = {"steps_trained": result.steps_trained,
                          "final_step": result.final_step}
  return result


def _train_run(run_dir: str, model, dataset: Dataset, optimizer_config: OptimizerConfig,
               config: TrainConfig, model_seed: int, data_seed: int,
               example_ids: Optional[np.ndarray] = None, progress: bool = True,
               stop_after_step: Optional[int] = None, desc: str = "train",
               mesh=None, policy: Optional[SubsetPolicy] = None,
               num_epochs: Optional[int] = None) -> RunResult:
  """Trains (or resumes, or skips if finished) one run, writing into `run_dir`.

  run_dir gets: checkpoints/<step>/ (Orbax), metrics.csv (one row per evaluation),
  summary.json, forget_scores.npy (f32[N] over the *whole* dataset; examples never
  trained on are never correct, hence inf); with a `policy`, also policy/step_<k>.npz
  (its state and current epoch plan at every checkpoint step).
  stop_after_step: end early after this step (simulates an interruption; for tests).
  mesh: a 1-D jax.sharding Mesh for data parallelism (None: default device).
  policy: a subset policy (train/subset.py) choosing each epoch's examples and loss
    weights (dynamic pruning); None trains on `example_ids` (default all) every epoch.
  num_epochs: train this many epochs, whatever their length (a policy's shrinking
    epochs then take fewer steps: the compute saved); None trains `config.num_steps`
    steps. `config.num_steps` is the step budget either way (summary.json "num_steps");
    the run counts as finished when that summary exists.

  Compute accounting (metrics.csv columns and summary.json "accounting"): optimizer
  steps, examples forwarded + back-propagated in training, examples forwarded to score
  (a policy's re-scoring passes), and wall seconds spent training, scoring, evaluating
  on the test set and checkpointing.
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
    return RunResult(run_dir, summary["final_step"], summary["test_accuracy"],
                     summary["test_loss"], 0, 0.0,
                     outcomes.outcome_of_summary(summary, outcomes.chance_of(dataset)))
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
  os.makedirs(run_dir, exist_ok=True)
  state, schedule, train_step, eval_step = build_run(model, dataset, optimizer_config, config,
                                                     model_seed, data_seed, example_ids)
  steps_per_epoch = schedule.steps_per_epoch
  dynamic = policy is not None
  policy = policy if dynamic else FixedSubset(schedule.example_ids)
  eval_every = _interval(config.eval_every_steps, steps_per_epoch, config.num_steps)
  save_every = _interval(config.save_steps, steps_per_epoch, config.num_steps)
  lr_at = learning_rate_schedule(_with_total_steps(optimizer_config, config),
                                 _schedule_epoch(config, schedule))
  train_step, eval_step = _compiled(train_step, eval_step, model,
                                    _with_total_steps(optimizer_config, config),
                                    _schedule_epoch(config, schedule), dataset, config.augment)
  update_forget = _jit_update_forget
  forget = init_forget_stats(dataset.num_train) if config.track_forgetting else None

  if mesh is not None:  # placed before any save/restore: multi-host Orbax needs global arrays
    state = replicate(state, mesh)
    forget = replicate(forget, mesh) if forget is not None else None
  checkpoints = RunCheckpoints(paths["checkpoints"])
  restored = checkpoints.restore_latest_intact(state, forget)  # None: a fresh run
  rows: list[dict] = []
  accum = {"loss_sum": 0.0, "correct_sum": 0.0, "count": 0}
  account = dict(_NO_ACCOUNTING)
  elapsed_before = 0.0
  pstate = policy.init_state()
  if restored is not None:
    latest, state, forget, record = (restored.step, restored.state, restored.forget,
                                     restored.record)
    accum = record.get("train_accum", accum)
    account.update(record.get("accounting", {}))
    elapsed_before = float(record.get("elapsed_s", 0.0))
    rows = [r for r in _read_rows(paths["metrics"]) if int(r["step"]) <= latest]
    if dynamic:
      pstate, plan, where = load_policy_state(run_dir, latest, pstate)
      epoch, epoch_start, final_step = where["epoch"], where["epoch_start"], where["final_step"]
    else:
      plan, epoch, epoch_start, final_step = None, None, None, config.num_steps
    log.info("%s: resuming from checkpoint step %d in %s", desc, latest, paths["checkpoints"])
  else:
    log.info("%s: %d params, %d examples, %d steps/epoch, %d steps", desc,
             num_params(state.params), len(schedule.example_ids), steps_per_epoch,
             config.num_steps)
    plan, epoch, epoch_start, final_step = None, None, None, config.num_steps
    if dynamic:
      pstate, plan, final_step = _next_epoch(policy, pstate, 0, state, account, config,
                                             num_epochs, 0)
      epoch, epoch_start = 0, 0
    rows.append(_eval_row(0, steps_per_epoch, float(lr_at(1)), None, eval_step, state, dataset,
                          config, 0.0, account))
    artifacts.write_csv(paths["metrics"], rows, _metric_fields(rows))
    _save(checkpoints, run_dir, 0, state, forget, {"train_accum": accum, "elapsed_s": 0.0,
                                                   "accounting": account},
          policy if dynamic else None, pstate, plan, (epoch, epoch_start, final_step))
  # Examples the current epoch trains on (a subset policy's plan, else the run's subset).
  kept = lambda: len(plan.ids) if plan is not None else len(schedule.example_ids)
  writer = open_run_writer(run_dir, config.tensorboard, rows, examples_kept=kept())

  first = int(state.step) + 1
  stop = _stop(final_step, stop_after_step)
  loss_sum, correct_sum = jnp.float32(accum["loss_sum"]), jnp.float32(accum["correct_sum"])
  count = int(accum["count"])
  expected = config.num_steps if num_epochs is None else _expected_steps(
      policy, num_epochs, config.batch_size)
  bar = tqdm.tqdm(total=expected, initial=first - 1, desc=desc, unit="step",
                  disable=not progress, dynamic_ncols=True, mininterval=1.0)
  session_start = time.time()
  step, visiting = first - 1, None
  saved_account = (-1, None)  # (step, accounting) of the latest checkpoint this call saved
  nonfinite = _NO_NONFINITE  # (first step with a non-finite loss or -1, its loss), on device
  divergence = None
  observes, pending = getattr(policy, "needs_losses", False), []

  def flush(pstate):
    for seen_ids, losses in pending:
      pstate = policy.observe(pstate, seen_ids, np.asarray(losses))
    pending.clear()
    return pstate

  while step < stop:
    step += 1
    if dynamic:
      if visiting is None or visiting[0] != epoch:
        visiting = (epoch, epoch_permutation(len(plan.ids), data_seed, epoch))
      start = (step - epoch_start - 1) * config.batch_size
      position = visiting[1][start:start + config.batch_size]
      ids = plan.ids[position]
    else:
      ids = schedule.batch_ids(step)
    batch = {**dataset.train_batch(ids), "example_ids": ids}
    if dynamic and plan.weights is not None:
      batch["weights"] = plan.weights[position]
    if mesh is not None:
      batch = shard_batch(batch, mesh)
    tick = time.time()
    state, metrics = train_step(state, batch)
    if step == first:  # the session's first step compiles (or reuses a compiled) step
      jax.block_until_ready(state.step)
      account["compile_seconds"] += time.time() - tick
    nonfinite = _track_nonfinite(nonfinite, step, metrics["loss"])
    if dynamic:
      epoch_steps = len(plan.ids) // config.batch_size
      epoch_value = epoch + (step - epoch_start) / epoch_steps
      epoch_end = step == epoch_start + epoch_steps
      eval_due = ((config.eval_every_steps == 0 and epoch_end)
                  or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0))
      save_due = (is_save_step(step, final_step, max(config.save_steps, 0),
                               config.early_save_steps, config.early_step)
                  or (config.save_steps == 0 and epoch_end and step > config.early_step))
    else:
      epoch_value, epoch_end = step / steps_per_epoch, False
      eval_due = step % eval_every == 0
      save_due = is_save_step(step, config.num_steps, save_every, config.early_save_steps,
                              config.early_step)
    if eval_due or save_due or epoch_end or step == stop:
      # Synced only here (not every step); the exact first bad step is still known. Before a
      # save the parameters are checked too, so no checkpoint ever holds non-finite ones;
      # at an epoch end, before a policy scores with a diverged model.
      divergence = _divergence(nonfinite, step, metrics["loss"], state if save_due else None)
      if divergence is not None:
        break
    if forget is not None:
      forget = update_forget(forget, metrics["example_ids"], metrics["correct"])
    if observes:  # read back lazily (at epoch ends and saves), so steps stay asynchronous
      pending.append((ids, metrics["per_example_loss"]))
    loss_sum = loss_sum + metrics["loss"] * len(ids)
    correct_sum = correct_sum + metrics["accuracy"] * len(ids)
    count += len(ids)
    account["optimizer_steps"] += 1
    account["train_examples"] += len(ids)
    bar.update(1)
    if epoch_end and step != final_step:
      jax.block_until_ready(state.params)  # training time ends here, scoring starts
      pstate = flush(pstate)
      epoch, epoch_start = epoch + 1, step
      pstate, plan, final_step = _next_epoch(policy, pstate, epoch, state, account, config,
                                             num_epochs, step)
      stop = _stop(final_step, stop_after_step)
    if eval_due or step == final_step:
      jax.block_until_ready(state.params)  # attribute pending steps to training
      elapsed = elapsed_before + time.time() - session_start
      train_stats = (float(loss_sum) / max(count, 1), float(correct_sum) / max(count, 1))
      tick = time.time()
      row = _eval_row(step, epoch_value, float(lr_at(step)), train_stats, eval_step, state,
                      dataset, config, elapsed, account)
      account["eval_seconds"] += time.time() - tick
      rows.append(row)
      artifacts.write_csv(paths["metrics"], rows, _metric_fields(rows))
      writer.write_row(row, examples_kept=kept())
      bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_accuracy']:.3f}")
      log.debug("%s: step %d epoch %.2f lr %.4g train loss %.4f acc %.4f | test loss %.4f "
               "acc %.4f | %.0fs", desc, step, row["epoch"], row["lr"], row["train_loss"],
               row["train_accuracy"], row["test_loss"], row["test_accuracy"], elapsed)
      loss_sum, correct_sum, count = jnp.float32(0.0), jnp.float32(0.0), 0
    if save_due:
      jax.block_until_ready(state.params)
      pstate = flush(pstate)
      elapsed = elapsed_before + time.time() - session_start
      accum = {"loss_sum": float(loss_sum), "correct_sum": float(correct_sum), "count": count}
      tick = time.time()
      saved_account = (step, dict(account))  # what this checkpoint records
      _save(checkpoints, run_dir, step, state, forget,
            {"train_accum": accum, "elapsed_s": elapsed, "accounting": saved_account[1]},
            policy if dynamic else None, pstate, plan, (epoch, epoch_start, final_step))
      account["checkpoint_seconds"] += time.time() - tick
  bar.close()
  writer.close()
  checkpoints.close()
  if divergence is not None:
    bad_step, bad_loss = divergence
    elapsed = elapsed_before + time.time() - session_start
    log.warning("%s", outcomes.divergence_message(desc, bad_step, bad_loss,
                                                  optimizer_config.learning_rate))
    summary = {
        "outcome": outcomes.DIVERGED, "diverged_step": bad_step, "diverged_loss": bad_loss,
        "num_steps": config.num_steps, "final_step": bad_step, "test_accuracy": None,
        "test_loss": None, "model_seed": model_seed, "data_seed": data_seed,
        "num_train_examples": int(len(schedule.example_ids)), "steps_per_epoch": steps_per_epoch,
        "train_seconds": elapsed, "accounting": _accounting(account, elapsed)}
    if dynamic:
      summary.update(_policy_summary(policy, epoch, num_epochs))
    artifacts.write_json(paths["summary"], summary)
    return _diverged_result(run_dir, bad_step, bad_loss, bad_step - first + 1,
                            time.time() - start_time)
  steps_trained = max(0, step - first + 1)
  final = rows[-1]
  outcome = outcomes.OK
  if step == final_step:
    # The accounting the final checkpoint records (its own save time excluded), so a summary
    # rewritten from that checkpoint after a crash is identical to this one.
    final_account = saved_account[1] if saved_account[0] == step else account
    extra = {"accounting": _accounting(final_account, final["elapsed_s"])}
    if dynamic:
      extra.update(_policy_summary(policy, epoch, num_epochs))
    outcome = write_run_outputs(paths, config, forget, final, model_seed, data_seed, schedule,
                                outcomes.chance_of(dataset), desc, final_step=step,
                                extra=extra)
  return RunResult(run_dir, step, final["test_accuracy"], final["test_loss"], steps_trained,
                   time.time() - start_time, outcome)


def _policy_summary(policy, epoch: int, num_epochs: Optional[int]) -> dict:
  return {"policy": policy.describe(), "num_epochs": epoch + 1,
          "budget": "steps" if num_epochs is None else "epochs"}


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


def _with_total_steps(optimizer_config: OptimizerConfig, config: TrainConfig) -> OptimizerConfig:
  """The linear schedule decays to 0 at the run's last step unless total_steps is given."""
  if optimizer_config.schedule == "linear" and not optimizer_config.total_steps:
    return dataclasses.replace(optimizer_config, total_steps=config.num_steps)
  return optimizer_config


_NO_ACCOUNTING = {"optimizer_steps": 0, "train_examples": 0, "scored_examples": 0,
                  "score_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0,
                  "compile_seconds": 0.0}
ACCOUNTING_FIELDS = ("optimizer_steps", "train_examples", "scored_examples", "train_seconds",
                     "score_seconds")


def _accounting(account: dict, elapsed: float) -> dict:
  """The counters plus train_seconds: wall time not spent scoring, evaluating, saving, or
  in the first step of each session (compile_seconds: it compiles, or waits for a step a
  previous run of the process compiled, so it is left out of the comparable time)."""
  other = sum(account.get(k, 0.0) for k in ("score_seconds", "eval_seconds",
                                             "checkpoint_seconds", "compile_seconds"))
  return {**account, "train_seconds": round(max(elapsed - other, 0.0), 3),
          "compile_seconds": round(account.get("compile_seconds", 0.0), 3),
          "score_seconds": round(account["score_seconds"], 3),
          "eval_seconds": round(account["eval_seconds"], 3),
          "checkpoint_seconds": round(account["checkpoint_seconds"], 3)}


def epoch_permutation(num_examples: int, data_seed: int, epoch: int) -> np.ndarray:
  """i64[M]: the order in which epoch `epoch` visits the positions of its plan's ids, the
  same seeded permutation as `BatchSchedule.epoch_order` applies to its ids."""
  return np.random.default_rng([data_seed, epoch]).permutation(num_examples)


def _stop(final_step: int, stop_after_step: Optional[int]) -> int:
  """The last step this call runs: the final step (-1: not known yet, the last epoch is
  not planned) or the interruption point."""
  final = final_step if final_step >= 0 else np.iinfo(np.int64).max
  return final if stop_after_step is None else min(final, stop_after_step)


def _next_epoch(policy, pstate, epoch: int, state, account: dict, config: TrainConfig,
                num_epochs: Optional[int], epoch_start: int):
  """Asks the policy for epoch `epoch`'s plan (timed as scoring); returns (pstate, plan,
  final step) where the final step is known once the last epoch is planned."""
  tick = time.time()
  pstate, plan = policy.plan_epoch(pstate, epoch, model_variables(state))
  account["score_seconds"] += time.time() - tick
  account["scored_examples"] += int(plan.scored_examples)
  if len(plan.ids) < config.batch_size:
    raise ValueError(f"epoch {epoch} would train on {len(plan.ids)} examples, fewer than one "
                     f"batch of {config.batch_size}; keep more examples or lower --batch_size")
  if num_epochs is None:
    return pstate, plan, config.num_steps
  if epoch + 1 == num_epochs:
    return pstate, plan, epoch_start + len(plan.ids) // config.batch_size
  return pstate, plan, -1


def _expected_steps(policy, num_epochs: int, batch_size: int) -> int:
  return int(sum(size // batch_size for size in policy.expected_epoch_sizes(num_epochs)))


def _save(checkpoints, run_dir, step, state, forget, record, policy, pstate, plan, where):
  if policy is not None:  # written first: a checkpoint step always has its policy state
    epoch, epoch_start, final_step = where
    save_policy_state(run_dir, step, pstate, plan, {"epoch": epoch, "epoch_start": epoch_start,
                                                    "final_step": final_step})
  checkpoints.save(step, state, forget, record)


def write_run_outputs(paths: dict, config: TrainConfig, forget: Optional[ForgetStats],
                      final: dict, model_seed: int, data_seed: int, schedule: BatchSchedule,
                      chance: outcomes.Chance, desc: str, final_step: Optional[int] = None,
                      extra: Optional[dict] = None) -> str:
  """The files of a finished run (train_run's, or one member of an ensemble): forget_scores.npy
  (if tracked) and summary.json, with the final row's task metrics (e.g. test_slot_f1) and
  `extra` (accounting, a policy's summary); returns the run's outcome (a warning line is
  logged for a failed one). final_step: the last step run (default: config.num_steps).
  chance: the dataset's chance level (outcomes.chance_of), which classifies the outcome."""
  outcome = outcomes.classify_outcome(final["test_loss"], chance,
                                      test_accuracy=final["test_accuracy"])
  if outcome == outcomes.FAILED:
    log.warning("%s", outcomes.failed_message(desc, final["test_loss"], chance,
                                              final["test_accuracy"]))
  if forget is not None:
    artifacts.write_npy(paths["forget_scores"], np.asarray(forgetting_scores(forget)))
  artifacts.write_json(paths["summary"], {
      "outcome": outcome, "num_steps": config.num_steps,
      "final_step": config.num_steps if final_step is None else final_step,
      "test_accuracy": final["test_accuracy"],
      "test_loss": final["test_loss"], "model_seed": model_seed, "data_seed": data_seed,
      **{k: final[k] for k in final if k not in METRIC_FIELDS},
      "num_train_examples": int(len(schedule.example_ids)),
      "steps_per_epoch": schedule.steps_per_epoch, "train_seconds": final["elapsed_s"],
      **(extra or {})})
  return outcome


def _schedule_epoch(config: TrainConfig, schedule: BatchSchedule) -> int:
  return config.schedule_steps_per_epoch or schedule.steps_per_epoch


_jit_update_forget = jax.jit(update_forget_stats, donate_argnums=0)
_COMPILED: dict = {}


def _compiled(train_step, eval_step, model, optimizer_config, steps_per_epoch, dataset, augment):
  """Jitted steps, shared by runs with the same model/optimizer/normalization, so a sweep of
  many runs compiles each distinct step once."""
  key = (repr(model), optimizer_config, steps_per_epoch, task_for(dataset, augment))
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


def _eval_row(step, epoch, lr, train_stats, eval_step, state, dataset, config, elapsed,
              account) -> dict:
  """One metrics.csv row; `epoch` is epochs done (float), or at step 0 the epoch length."""
  test = evaluate_dataset(eval_step, state, dataset, config.eval_batch_size)
  train_loss, train_acc = train_stats if train_stats else (float("nan"), float("nan"))
  return {"step": step, "epoch": round(epoch if step else 0.0, 4), "lr": lr,
          "train_loss": train_loss, "train_accuracy": train_acc, "test_loss": test["loss"],
          "test_accuracy": test["accuracy"], "elapsed_s": round(elapsed, 3),
          "optimizer_steps": account["optimizer_steps"],
          "train_examples": account["train_examples"],
          "scored_examples": account["scored_examples"],
          "score_seconds": round(account["score_seconds"], 3),
          **{f"test_{k}": v for k, v in test.items() if k not in ("loss", "accuracy")}}


def _metric_fields(rows: list[dict]) -> tuple:
  """METRIC_FIELDS, then task-specific columns (e.g. test_slot_f1) in first-seen order."""
  extra = [k for row in rows for k in row if k not in METRIC_FIELDS]
  return METRIC_FIELDS + tuple(dict.fromkeys(extra))


def _read_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = list(csv.DictReader(f))
  ints = ("step", "optimizer_steps", "train_examples", "scored_examples")
  return [{k: (int(v) if k in ints else float(v)) for k, v in r.items() if v not in (None, "")}
          for r in rows]


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
