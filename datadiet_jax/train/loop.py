"""The training loop of one run: batches -> jitted step -> forgetting -> eval -> checkpoints.

With a subset policy (train/subset.py; dynamic pruning in datadiet_jax.prune.dynamic and
.soft) each epoch trains on the examples, with the loss weights, the policy plans for it;
the policy's state is checkpointed with the run, so resume stays exact.

Resumable: if the run's checkpoint folder holds a checkpoint, training continues from
the latest one and ends in exactly the state an uninterrupted run reaches (the batches
are a pure function of the step, the augmentation key is fold_in(key, step), and the
forgetting statistics and running train metrics are checkpointed with the state).

One loop for lone runs and ensembles: `run_loop` drives M >= 1 runs ("members") that share
a step timeline through small named phases (resume, batch, step, cadence, divergence,
counting, epoch planning, rows and checkpoints, final files). Its step is pluggable
(`Stepper`): a lone run is an ensemble of one over its plain jitted step (`plain_stepper`;
not vmapped, so its numbers are the lone step's), train_ensemble plugs in the stacked step
of ensemble_loop.py. Subset policies (one member) and the timed per-phase accounting are
the lone run's; an ensemble's members record the counts only.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from datadiet_jax import artifacts
from datadiet_jax.checkpoint import RunCheckpoints, is_save_step
from datadiet_jax.data.batching import BatchSchedule
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.data.loader import LoaderConfig, StepFeeder
from datadiet_jax.sweep import lock as run_lock
from datadiet_jax.train.evaluate import evaluate_dataset
from datadiet_jax.train.forgetting import ForgetStats, forgetting_scores
from datadiet_jax.train import outcome as outcomes
from datadiet_jax.train.dynamics import (check_names, dynamics_scores, forget_of, init_tracked,
                                         update_tracked)
from datadiet_jax.train.metrics_writer import open_run_writer
from datadiet_jax.train.sharding import place_process_rows, process_rows, replicate
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
  loader: how batches are read (grain threads / worker processes, device prefetch;
    data/loader.py); the batches are the same either way (not part of the config check).
  track_dynamics: training-dynamics scores the step accumulates besides forgetting
    (train/dynamics.py: aum, dyn_unc, dual, tdds), over windows of `dynamics_window` visits;
    saved with every checkpoint, written as <run>/dynamics/<name>.npy at the end.
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
  loader: LoaderConfig = LoaderConfig()
  track_dynamics: tuple = ()
  dynamics_window: int = 10

  def __post_init__(self):
    object.__setattr__(self, "track_dynamics", check_names(self.track_dynamics,
                                                            self.dynamics_window))
    if self.dynamics_window < 2:
      raise ValueError(f"--dynamics_window={self.dynamics_window}: a window needs >= 2 visits")
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
          "forget_scores": os.path.join(run_dir, "forget_scores.npy"),
          "dynamics": os.path.join(run_dir, "dynamics")}


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
  (a policy's re-scoring passes), and the seconds of each phase, each timed directly
  (time.perf_counter around it; PHASES): setup (building the run, opening writers),
  compile (the session's first step), data (gathering + placing batches), train (the
  steps, and the device syncs at phase boundaries that wait for them), score (the
  policy: scoring passes, selection, observing losses), eval (test-set evaluation and
  metrics rows), checkpoint (saves, restores, waiting for async saves at the end).
  wall_seconds is the wall time of the run's calls (since each call started, summed
  over resumed sessions up to the checkpoint each resumed from) and unaccounted_seconds
  = wall_seconds - the sum of the phases: the loop's own bookkeeping (small).

  The run is the loop's ensemble of one (`run_loop`) over its plain jitted step.
  """
  start_time, clock_start = time.time(), time.perf_counter()
  if is_finished(run_dir, config.num_steps):
    return recorded_result(run_dir, dataset, desc)
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
  state, schedule, train_step, eval_step = build_run(model, dataset, optimizer_config, config,
                                                     model_seed, data_seed, example_ids)
  member = new_member(run_dir, model_seed, data_seed, schedule, desc)
  optimizer_config = _with_total_steps(optimizer_config, config)
  train_step, eval_step = _compiled(train_step, eval_step, model, optimizer_config,
                                    _schedule_epoch(config, schedule), dataset, config.augment)
  forget = init_tracked(dataset.num_train, dataset.num_classes, config.track_forgetting,
                        config.track_dynamics, config.dynamics_window)
  if mesh is not None:  # placed before any save/restore: multi-host Orbax needs global arrays
    state = replicate(state, mesh)
    forget = replicate(forget, mesh) if forget is not None else None
  expected = config.num_steps if num_epochs is None else _expected_steps(
      FixedSubset(schedule.example_ids) if policy is None else policy, num_epochs, config.batch_size)
  log.info("%s: %d params, %d examples, %d steps/epoch, %d steps", desc,
           num_params(state.params), len(schedule.example_ids), schedule.steps_per_epoch,
           config.num_steps)
  loop = Loop(
      members=[member], stepper=plain_stepper(train_step, mesh), dataset=dataset,
      config=config, epochs=Epochs(policy, num_epochs, config.num_steps,
                                    pstate=None if policy is None else policy.init_state()),
      learning_rate=optimizer_config.learning_rate, eval_step=eval_step,
      lr_at=learning_rate_schedule(optimizer_config, _schedule_epoch(config, schedule)),
      steps_per_epoch=schedule.steps_per_epoch, expected_steps=expected, desc=desc,
      progress=progress, stop_after_step=stop_after_step, start_time=start_time,
      clock_start=clock_start)
  return run_loop(loop, [state], [forget])[0]


def recorded_result(run_dir: str, dataset: Dataset, desc: str) -> RunResult:
  """The RunResult of a run that already ended (is_finished): nothing is trained."""
  summary = artifacts.read_json(run_paths(run_dir)["summary"])
  if summary.get("outcome") == outcomes.DIVERGED:
    log.warning("%s: already ended, diverged at step %d (recorded in %s); delete %s to "
                "train it again", desc, summary["diverged_step"], run_paths(run_dir)["summary"],
                run_dir)
    return _diverged_result(run_dir, summary["diverged_step"], summary["diverged_loss"], 0, 0.0)
  log.info("%s: already finished (%s), skipping", desc, run_paths(run_dir)["summary"])
  return RunResult(run_dir, summary["final_step"], summary["test_accuracy"],
                   summary["test_loss"], 0, 0.0,
                   outcomes.outcome_of_summary(summary, outcomes.chance_of(dataset)))


# --------------------------------------------------------------------------- the loop
# One driver (`run_loop`) trains M >= 1 runs ("members") that share a step timeline: a lone
# run is an ensemble of one over its plain jitted step (`plain_stepper`); train_ensemble
# plugs in a step over a stacked member axis (ensemble_loop.py). Each phase below is one
# named function: resume, batch, step, cadence, divergence, counting, epoch planning,
# evaluation, checkpointing, and the final files.

_NO_ACCUM = {"loss_sum": 0.0, "correct_sum": 0.0, "count": 0}


@dataclasses.dataclass
class Member:
  """Host-side bookkeeping of one run the loop trains (everything not a device array)."""
  run_dir: str
  model_seed: int
  data_seed: int
  schedule: BatchSchedule
  desc: str
  paths: dict
  checkpoints: RunCheckpoints
  saved_steps: set = dataclasses.field(default_factory=set)
  rows: list = dataclasses.field(default_factory=list)
  elapsed_before: float = 0.0
  wall_before: float = 0.0  # accounting wall seconds of the sessions before this one
  accum: dict = dataclasses.field(default_factory=lambda: dict(_NO_ACCUM))
  account: dict = dataclasses.field(default_factory=lambda: dict(_NO_ACCOUNTING))
  saved_account: tuple = (-1, None)  # (step, accounting) of the latest checkpoint saved
  writer: object = None
  divergence: Optional[tuple] = None  # (step, train loss) once it diverged
  loader_state: Optional[dict] = None  # the restored checkpoint's grain iterator state


def new_member(run_dir: str, model_seed: int, data_seed: int, schedule, desc: str) -> Member:
  os.makedirs(run_dir, exist_ok=True)
  paths = run_paths(run_dir)
  return Member(run_dir, model_seed, data_seed, schedule, desc, paths,
                RunCheckpoints(paths["checkpoints"]))


@dataclasses.dataclass
class Epochs:
  """The epochs the members share: a subset policy's state and current plan (dynamic
  pruning; one member), or, policy None, each member's fixed BatchSchedule."""
  policy: Optional[SubsetPolicy]
  num_epochs: Optional[int]
  final_step: int  # the last step; -1 until a policy's last epoch is planned
  pstate: object = None
  plan: object = None
  epoch: Optional[int] = None
  epoch_start: Optional[int] = None
  visiting: Optional[tuple] = None  # (epoch, its order of the plan's positions)
  pending: list = dataclasses.field(default_factory=list)  # (ids, losses) not yet observed

  @property
  def dynamic(self) -> bool:
    return self.policy is not None


@dataclasses.dataclass(frozen=True)
class Stepper:
  """The loop's pluggable step and how its device state maps to members.

  step(state, forget, batch) -> (state, forget, metrics): metrics {loss, accuracy} are
    f32[] for a plain run, f32[M] when `stacked` (members on a leading axis).
  assemble([state_m], [forget_m]) -> the device (state, forget) the step takes.
  member(tree, m) -> member m's part of the state or forgetting statistics.
  params_finite(params) -> bool[] or bool[M]. place_batch(batch) -> the placed batch.
  rows(batch_size) -> the rows of each global batch this process reads and places (all of
    them in one process; its devices' block of a mesh under jax.distributed).
  timed: the per-phase seconds (compile, eval, checkpoint) are measured and checkpointed
    (a lone run); else only the counts are (an ensemble's seconds are not split).
  """
  step: Callable
  stacked: bool
  timed: bool
  assemble: Callable
  member: Callable
  params_finite: Callable
  place_batch: Callable
  rows: Callable = lambda batch_size: slice(None)


def plain_stepper(step, mesh=None) -> Stepper:
  """A lone run's step: step(state, forget, batch) -> (state, forget, metrics), the jitted
  train step with the forgetting update in the same program (`_compiled`). On a mesh each
  process reads only its devices' rows of every batch and places them (process_rows)."""
  if mesh is None:
    return Stepper(step, stacked=False, timed=True, assemble=lambda s, f: (s[0], f[0]),
                   member=lambda tree, m: tree, params_finite=_params_finite,
                   place_batch=lambda batch: batch)
  return Stepper(step, stacked=False, timed=True, assemble=lambda s, f: (s[0], f[0]),
                 member=lambda tree, m: tree, params_finite=_params_finite,
                 place_batch=lambda batch: place_process_rows(batch, mesh),
                 rows=functools.lru_cache(maxsize=None)(
                     lambda batch_size: process_rows(mesh, batch_size)))


@dataclasses.dataclass
class Loop:
  """Everything one call of `run_loop` trains with; the device state and running sums are
  filled in by it."""
  members: list
  stepper: Stepper
  epochs: Epochs
  dataset: Dataset
  config: TrainConfig
  learning_rate: float  # for the divergence message
  eval_step: Callable
  lr_at: Callable
  steps_per_epoch: int
  expected_steps: int
  desc: str
  progress: bool
  stop_after_step: Optional[int]
  start_time: float
  state: object = None
  forget: object = None
  loss_sum: object = None  # f32[] or f32[M] on device, since the last evaluation
  correct_sum: object = None
  count: int = 0
  nonfinite: object = None  # (first non-finite step or -1, its loss), on device
  session_start: float = 0.0
  clock_start: Optional[float] = None  # perf_counter at the call's start (None: run_loop's)
  setup_seconds: float = 0.0  # this call's time before run_loop
  feeder: Optional[StepFeeder] = None  # config.loader.reads_ahead: the segment's reader
  feeder_epoch: Optional[int] = None  # the policy epoch it reads (None: fixed schedules)

  @property
  def eval_every(self) -> int:
    return _interval(self.config.eval_every_steps, self.steps_per_epoch, self.config.num_steps)

  @property
  def save_every(self) -> int:
    return _interval(self.config.save_steps, self.steps_per_epoch, self.config.num_steps)

  def alive(self) -> list:
    return [m for m, member in enumerate(self.members) if member.divergence is None]

  def elapsed(self, member: Member) -> float:
    return member.elapsed_before + time.time() - self.session_start

  def charge(self, key: str, since: float, members=None) -> float:
    """Adds perf_counter() - since to phase `key` of the members' accounting (a timed
    stepper's; default all members); returns the time now, the next phase's start."""
    now = time.perf_counter()
    if self.stepper.timed:
      for member in self.members if members is None else members:
        member.account[key] += now - since
    return now

  def account_now(self, member: Member) -> dict:
    """member's accounting with its wall seconds up to now (what a checkpoint records)."""
    return {**member.account, "wall_seconds": member.wall_before + time.perf_counter()
            - self.clock_start}


@dataclasses.dataclass(frozen=True)
class _Due:
  """What a step ends with: epochs done (float), epoch end, an evaluation, a checkpoint."""
  epoch_value: float
  epoch_end: bool
  evaluate: bool
  save: bool


def run_loop(loop: Loop, states: list, forgets: list) -> list[RunResult]:
  """Trains loop.members from their initial states (resuming from their checkpoints) to
  the final step (or stop_after_step); returns one RunResult per member."""
  if loop.clock_start is None:
    loop.clock_start = time.perf_counter()
  loop.setup_seconds = time.perf_counter() - loop.clock_start
  states, forgets = _resume(loop, states, forgets)
  tick = time.perf_counter()
  loop.state, loop.forget = loop.stepper.assemble(states, forgets)
  first = int(states[0].step) + 1
  _start_session(loop)
  loop.charge("setup_seconds", tick)
  bar = tqdm.tqdm(total=loop.expected_steps, initial=first - 1, desc=loop.desc, unit="step",
                  disable=not loop.progress, dynamic_ncols=True, mininterval=1.0)
  step, stop = first - 1, _stop(loop.epochs.final_step, loop.stop_after_step)
  try:
    step = _train_steps(loop, first, step, stop, bar)
  finally:
    _close_feeder(loop)
  bar.close()
  return [_finish(loop, m, step, first) for m in range(len(loop.members))]


def _train_steps(loop: Loop, first: int, step: int, stop: int, bar) -> int:
  """Steps the loop from `step` + 1 to `stop` (or until every member diverged); returns the
  last step run."""
  while step < stop:
    step += 1
    ids, metrics = _advance(loop, step, first)
    due = _cadence(loop, step)
    tick = time.perf_counter()
    if due.evaluate or due.save or due.epoch_end or step == stop:
      # Synced only here (not every step); the exact first bad step is still known. Before a
      # save the parameters are checked too, so no checkpoint ever holds non-finite ones;
      # at an epoch end, before a policy scores with a diverged model.
      diverged = _new_divergences(loop, step, metrics["loss"], due.save)
      tick = loop.charge("train_seconds", tick)  # the sync waited for the steps
      for m, found in diverged:
        _retire(loop, loop.members[m], found, step)
      if not loop.alive():
        break
    _count_step(loop, ids, metrics)
    loop.charge("train_seconds", tick, [loop.members[m] for m in loop.alive()])
    bar.update(1)
    if due.epoch_end and step != loop.epochs.final_step:
      _plan_next_epoch(loop, step)
      stop = _stop(loop.epochs.final_step, loop.stop_after_step)
    if due.evaluate or due.save:
      _record_step(loop, step, due, bar)
  return step


def _resume(loop: Loop, states: list, forgets: list) -> tuple[list, list]:
  """Every member's state at one common step: each restores its latest intact checkpoint
  (a fresh one first evaluates and saves step 0); members that stopped at different steps
  all restart from the newest step every one of them holds."""
  template_state, template_forget = states[0], forgets[0]
  restored = [_restore_or_start(loop, m, states, forgets) for m in range(len(loop.members))]
  common = min(0 if step is None else step for step in restored)
  for m, member in enumerate(loop.members):
    if restored[m] is not None and restored[m] != common:
      log.info("%s: %s restarts from step %d (the newest step every member holds)", loop.desc,
               member.run_dir, common)
      states[m], forgets[m], record = member.checkpoints.restore(common, template_state,
                                                                 template_forget)
      _take_record(member, common, record, loop.config.batch_size)
    elif restored[m] is not None:
      log.info("%s: resuming from checkpoint step %d in %s", member.desc, common,
               member.paths["checkpoints"])
  if loop.epochs.dynamic and restored[0] is not None:
    _load_epochs(loop, common)
  return states, forgets


def _restore_or_start(loop: Loop, m: int, states: list, forgets: list) -> int:
  """Restores member m's latest intact checkpoint into states/forgets[m] and returns its
  step, or, if it has none, starts it (plans epoch 0, evaluates and saves step 0): None."""
  member = loop.members[m]
  tick = time.perf_counter()
  restored = member.checkpoints.restore_latest_intact(states[m], forgets[m])
  if restored is not None:
    states[m], forgets[m] = restored.state, restored.forget
    _take_record(member, restored.step, restored.record, loop.config.batch_size)
    if loop.stepper.timed:  # this session's setup, on top of the restored accounting
      member.account["setup_seconds"] += loop.setup_seconds
    loop.charge("checkpoint_seconds", tick, [member])
    return restored.step
  if loop.stepper.timed:
    member.account["setup_seconds"] += loop.setup_seconds
  if loop.epochs.dynamic:
    _plan_epoch(loop, 0, 0, states[m], member.account)
  tick = time.perf_counter()
  member.rows = [_eval_row(0, 0.0, float(loop.lr_at(1)), None, loop.eval_step, states[m],
                           loop.dataset, loop.config, 0.0, member.account)]
  artifacts.write_csv(member.paths["metrics"], member.rows, _metric_fields(member.rows))
  loop.charge("eval_seconds", tick, [member])
  _save_checkpoint(loop, member, 0, states[m], forgets[m], 0.0)
  return None


def _take_record(member: Member, step: int, record: dict, batch_size: int) -> None:
  """A restored checkpoint's host side: running sums, wall time, accounting (a record
  without it, an ensemble's, has the full-data counts of `step`) and metrics rows."""
  member.accum = record.get("train_accum", member.accum)
  member.loader_state = record.get("loader")
  member.elapsed_before = float(record.get("elapsed_s", 0.0))
  member.account = {**_NO_ACCOUNTING,
                    **record.get("accounting", _full_data_account(step, batch_size))}
  # (A checkpoint from before wall_seconds was recorded: its elapsed_s, which left out
  # the setup and the first evaluation and save.)
  member.wall_before = float(member.account.pop("wall_seconds", member.elapsed_before))
  member.rows = [r for r in _read_rows(member.paths["metrics"]) if int(r["step"]) <= step]
  member.saved_steps = set(member.checkpoints.steps())


def _load_epochs(loop: Loop, step: int) -> None:
  """A policy's state, plan and epoch position as checkpointed at `step`."""
  epochs, tick = loop.epochs, time.perf_counter()
  epochs.pstate, epochs.plan, where = load_policy_state(loop.members[0].run_dir, step,
                                                        epochs.pstate)
  epochs.epoch, epochs.epoch_start = where["epoch"], where["epoch_start"]
  epochs.final_step = where["final_step"]
  loop.charge("checkpoint_seconds", tick, loop.members[:1])


def _plan_epoch(loop: Loop, epoch: int, epoch_start: int, state, account: dict) -> None:
  epochs = loop.epochs
  epochs.pstate, epochs.plan, epochs.final_step = _next_epoch(
      epochs.policy, epochs.pstate, epoch, state, account, loop.config, epochs.num_epochs,
      epoch_start, loop.stepper.timed)
  epochs.epoch, epochs.epoch_start = epoch, epoch_start


def _kept(loop: Loop, member: Member) -> int:
  """Examples the current epoch trains on (a subset policy's plan, else the run's subset)."""
  plan = loop.epochs.plan
  return len(plan.ids) if plan is not None else len(member.schedule.example_ids)


def _start_session(loop: Loop) -> None:
  """Opens the members' TensorBoard writers and puts their running sums on the device."""
  for member in loop.members:
    member.writer = open_run_writer(member.run_dir, loop.config.tensorboard, member.rows,
                                    examples_kept=_kept(loop, member))
  stacked, num_members = loop.stepper.stacked, len(loop.members)
  sums = lambda key: (jnp.asarray([m.accum[key] for m in loop.members], jnp.float32)
                      if stacked else jnp.float32(loop.members[0].accum[key]))
  loop.loss_sum, loop.correct_sum = sums("loss_sum"), sums("correct_sum")
  loop.count = int(loop.members[0].accum["count"])
  loop.nonfinite = ((np.full(num_members, -1, np.int32), np.zeros(num_members, np.float32))
                    if stacked else _NO_NONFINITE)
  loop.session_start = time.time()


@dataclasses.dataclass(frozen=True)
class StepBatches:
  """The host batch of every step of a stretch of the timeline that has one plan: a
  picklable pure function of the step (data/loader.py's grain threads and worker
  processes call it).

  A policy's epoch (plan_ids set): step t takes the plan's positions
  order[(t - epoch_start - 1) * batch_size:][:batch_size], with their loss weights; else
  each member's BatchSchedule gives the ids (stacked: i32[M, B]). `rows` are the rows of
  each batch this process reads (all of them unless a mesh spans processes).
  """
  dataset: Any
  rows: slice
  schedules: tuple = ()
  stacked: bool = False
  plan_ids: Optional[np.ndarray] = None
  plan_weights: Optional[np.ndarray] = None
  order: Optional[np.ndarray] = None
  epoch_start: int = 0
  batch_size: int = 0

  def __call__(self, step) -> tuple[int, np.ndarray, dict]:
    """(step, global ids i32[B] or i32[M, B], host batch of this process's rows)."""
    step, position = int(step), None
    if self.plan_ids is not None:
      start = (step - self.epoch_start - 1) * self.batch_size
      position = self.order[start:start + self.batch_size]
      ids = self.plan_ids[position]
    else:
      per_member = [schedule.batch_ids(step) for schedule in self.schedules]
      ids = np.stack(per_member) if self.stacked else per_member[0]
    batch = {**_read_batch_rows(self.dataset, ids, self.rows), "example_ids": ids[..., self.rows]}
    if position is not None and self.plan_weights is not None:
      batch["weights"] = self.plan_weights[position][self.rows]
    return step, ids, batch


def _step_batches(loop: Loop) -> StepBatches:
  """The StepBatches of the current plan: the policy's epoch, or the fixed schedules."""
  epochs, rows = loop.epochs, loop.stepper.rows(loop.config.batch_size)
  if not epochs.dynamic:
    return StepBatches(loop.dataset, rows, schedules=tuple(m.schedule for m in loop.members),
                       stacked=loop.stepper.stacked)
  if epochs.visiting is None or epochs.visiting[0] != epochs.epoch:
    epochs.visiting = (epochs.epoch, epoch_permutation(
        len(epochs.plan.ids), loop.members[0].data_seed, epochs.epoch))
  return StepBatches(loop.dataset, rows, plan_ids=epochs.plan.ids,
                     plan_weights=epochs.plan.weights, order=epochs.visiting[1],
                     epoch_start=epochs.epoch_start, batch_size=loop.config.batch_size)


def _batch(loop: Loop, step: int) -> tuple[np.ndarray, dict]:
  """(ids, placed batch) of `step`: ids i32[B] (plain) or i32[M, B] (stacked), from the
  policy's plan of the epoch (with its loss weights) or each member's BatchSchedule; read
  here, or ahead by the loader (config.loader)."""
  if loop.config.loader.reads_ahead:
    return _feeder(loop, step).next(step)
  _, ids, batch = _step_batches(loop)(step)
  return ids, loop.stepper.place_batch(batch)


def _feeder(loop: Loop, step: int) -> StepFeeder:
  """The loader of the segment `step` is in (the run, or a policy's epoch), opened at
  `step` (from the restored checkpoint's iterator state, if it has one for it)."""
  epochs = loop.epochs
  key = epochs.epoch if epochs.dynamic else None
  if loop.feeder is not None and loop.feeder_epoch == key:
    return loop.feeder
  _close_feeder(loop)
  if epochs.dynamic:
    first = epochs.epoch_start + 1
    last = epochs.epoch_start + len(epochs.plan.ids) // loop.config.batch_size
  else:
    first, last = 1, epochs.final_step
  place = loop.stepper.place_batch
  if loop.config.loader.device_prefetch:  # start the host->device copy ahead of the step
    place = lambda batch: jax.device_put(loop.stepper.place_batch(batch))
  state, loop.members[0].loader_state = loop.members[0].loader_state, None
  loop.feeder = StepFeeder(_step_batches(loop), first, last, place, loop.config.loader,
                           start=step, state=state)
  loop.feeder_epoch = key
  if loop.feeder.restored:
    log.info("%s: loader resumed at step %d from the checkpointed iterator state", loop.desc,
             step)
  return loop.feeder


def _close_feeder(loop: Loop) -> None:
  """Stops the loader's threads / worker processes (data seconds)."""
  if loop.feeder is not None:
    tick = time.perf_counter()
    loop.feeder.close()
    loop.feeder = None
    loop.charge("data_seconds", tick)


def _read_batch_rows(dataset, ids: np.ndarray, rows: slice) -> dict:
  """dataset.train_batch of rows `rows` of the batch `ids` (i32[B]). Only those examples
  are read, except where the batch's shape depends on all of them (text trimmed to the
  batch's longest example: held in memory, cheap to read whole, then cut)."""
  if rows == slice(None):
    return dataset.train_batch(ids)
  if getattr(dataset, "trim_multiple", 0):
    return jax.tree_util.tree_map(lambda x: x[rows], dataset.train_batch(ids))
  return dataset.train_batch(ids[rows])


def _advance(loop: Loop, step: int, first: int) -> tuple[np.ndarray, dict]:
  """Runs `step` on the device; returns its (ids, metrics) and tracks non-finite losses."""
  tick = time.perf_counter()
  ids, batch = _batch(loop, step)  # host gather + host->device placement
  tick = loop.charge("data_seconds", tick)
  loop.state, loop.forget, metrics = loop.stepper.step(loop.state, loop.forget, batch)
  if step == first and loop.stepper.timed:  # the first step compiles (or reuses) the step
    jax.block_until_ready(loop.state.step)
    tick = loop.charge("compile_seconds", tick)
  loop.nonfinite = _track_nonfinite(loop.nonfinite, step, metrics["loss"])
  loop.charge("train_seconds", tick)
  return ids, metrics


def _cadence(loop: Loop, step: int) -> _Due:
  """Whether `step` ends an epoch, evaluates (always at the final step) and saves: a
  policy's epochs have their own lengths; fixed subsets share `steps_per_epoch`."""
  config, epochs = loop.config, loop.epochs
  if not epochs.dynamic:
    return _Due(step / loop.steps_per_epoch, False,
                step % loop.eval_every == 0 or step == epochs.final_step,
                is_save_step(step, config.num_steps, loop.save_every, config.early_save_steps,
                             config.early_step))
  epoch_steps = len(epochs.plan.ids) // config.batch_size
  epoch_end = step == epochs.epoch_start + epoch_steps
  evaluate = ((config.eval_every_steps == 0 and epoch_end)
              or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0))
  save = (is_save_step(step, epochs.final_step, max(config.save_steps, 0),
                       config.early_save_steps, config.early_step)
          or (config.save_steps == 0 and epoch_end and step > config.early_step))
  return _Due(epochs.epoch + (step - epochs.epoch_start) / epoch_steps, epoch_end,
              evaluate or step == epochs.final_step, save)


def _new_divergences(loop: Loop, step: int, losses, check_params: bool) -> list:
  """[(m, (step, train loss))] for the live members found diverged at `step`: the first
  non-finite loss so far, else, with `check_params` (a save step), this step if its update
  made member m's parameters non-finite."""
  first_step, first_loss = (np.atleast_1d(x) for x in jax.device_get(loop.nonfinite))
  params_ok = (np.atleast_1d(np.asarray(loop.stepper.params_finite(loop.state.params)))
               if check_params else None)
  found = []
  for m in loop.alive():
    if int(first_step[m]) >= 0:
      found.append((m, (int(first_step[m]), float(first_loss[m]))))
    elif params_ok is not None and not bool(params_ok[m]):
      found.append((m, (int(step), float(np.atleast_1d(np.asarray(losses))[m]))))
  return found


def _retire(loop: Loop, member: Member, divergence: tuple, step: int) -> None:
  """Ends a diverged member: its summary.json records the divergence, it writes nothing
  more (its accounting stops before `step`, the step that found it)."""
  bad_step, bad_loss = divergence
  member.divergence = divergence
  log.warning("%s", outcomes.divergence_message(member.desc, bad_step, bad_loss,
                                                loop.learning_rate))
  elapsed = loop.elapsed(member)
  summary = {
      "outcome": outcomes.DIVERGED, "diverged_step": bad_step, "diverged_loss": bad_loss,
      "num_steps": loop.config.num_steps, "final_step": bad_step, "test_accuracy": None,
      "test_loss": None, "model_seed": member.model_seed, "data_seed": member.data_seed,
      "num_train_examples": int(len(member.schedule.example_ids)),
      "steps_per_epoch": loop.steps_per_epoch, "train_seconds": elapsed,
      "accounting": _accounting(loop.account_now(member), loop.stepper.timed)}
  if loop.epochs.dynamic:
    summary.update(_policy_summary(loop.epochs.policy, loop.epochs.epoch,
                                   loop.epochs.num_epochs))
  artifacts.write_json(member.paths["summary"], summary)
  member.writer.close()


def _count_step(loop: Loop, ids: np.ndarray, metrics: dict) -> None:
  """Adds a step to the running train metrics, the accounting and a policy's losses."""
  size = ids.shape[-1]
  if getattr(loop.epochs.policy, "needs_losses", False):
    # Read back lazily (at epoch ends and saves), so steps stay asynchronous.
    loop.epochs.pending.append((ids, metrics["per_example_loss"]))
  loop.loss_sum = loop.loss_sum + metrics["loss"] * size
  loop.correct_sum = loop.correct_sum + metrics["accuracy"] * size
  loop.count += size
  for member in loop.members:
    member.account["optimizer_steps"] += 1
    member.account["train_examples"] += size


def _observe_pending(loop: Loop) -> None:
  epochs = loop.epochs
  for seen_ids, losses in epochs.pending:
    epochs.pstate = epochs.policy.observe(epochs.pstate, seen_ids, np.asarray(losses))
  epochs.pending.clear()


def _plan_next_epoch(loop: Loop, step: int) -> None:
  """At an epoch end (a policy's): the policy observes its losses and plans the next epoch."""
  tick = time.perf_counter()
  jax.block_until_ready(loop.state.params)  # training time ends here, scoring starts
  tick = loop.charge("train_seconds", tick)
  _observe_pending(loop)
  loop.charge("score_seconds", tick)
  _plan_epoch(loop, loop.epochs.epoch + 1, step, loop.stepper.member(loop.state, 0),
              loop.members[0].account)


def _record_step(loop: Loop, step: int, due: _Due, bar) -> None:
  """At an evaluation or save step: each live member's metrics row and checkpoint (one
  it already holds is not written again); an evaluation restarts the running sums."""
  tick = time.perf_counter()
  jax.block_until_ready(loop.state.params)  # attribute pending steps to training
  loss_host, correct_host = (np.atleast_1d(np.asarray(x))
                             for x in (loop.loss_sum, loop.correct_sum))
  tick = loop.charge("train_seconds", tick)
  if due.save:
    _observe_pending(loop)
    loop.charge("score_seconds", tick)
  for m in loop.alive():
    member, state = loop.members[m], loop.stepper.member(loop.state, m)
    if due.evaluate:
      train_stats = (float(loss_host[m]) / max(loop.count, 1),
                     float(correct_host[m]) / max(loop.count, 1))
      _evaluate(loop, member, step, due.epoch_value, state, train_stats)
    if due.save and step not in member.saved_steps:
      member.accum = (dict(_NO_ACCUM) if due.evaluate else
                      {"loss_sum": float(loss_host[m]), "correct_sum": float(correct_host[m]),
                       "count": loop.count})
      forget = None if loop.forget is None else loop.stepper.member(loop.forget, m)
      _save_checkpoint(loop, member, step, state, forget, loop.elapsed(member))
  if due.evaluate:
    row = loop.members[loop.alive()[0]].rows[-1]
    bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_accuracy']:.3f}")
    loop.loss_sum, loop.correct_sum = (jnp.zeros_like(loop.loss_sum),
                                       jnp.zeros_like(loop.correct_sum))
    loop.count = 0


def _evaluate(loop: Loop, member: Member, step: int, epoch_value: float, state,
              train_stats: tuple) -> None:
  """One metrics.csv row (and TensorBoard point) of `member` at `step`."""
  elapsed = loop.elapsed(member)
  tick = time.perf_counter()
  row = _eval_row(step, epoch_value, float(loop.lr_at(step)), train_stats, loop.eval_step,
                  state, loop.dataset, loop.config, elapsed, member.account)
  member.rows.append(row)
  artifacts.write_csv(member.paths["metrics"], member.rows, _metric_fields(member.rows))
  member.writer.write_row(row, examples_kept=_kept(loop, member))
  loop.charge("eval_seconds", tick, [member])
  log.debug("%s: step %d epoch %.2f lr %.4g train loss %.4f acc %.4f | test loss %.4f "
            "acc %.4f | %.0fs", member.desc, step, row["epoch"], row["lr"], row["train_loss"],
            row["train_accuracy"], row["test_loss"], row["test_accuracy"], elapsed)


def _save_checkpoint(loop: Loop, member: Member, step: int, state, forget,
                     elapsed: float) -> None:
  """Saves `member` at `step` (with a policy's state first); a timed stepper's checkpoint
  records the accounting (up to the save's start, wall seconds included), and the save's
  seconds count as checkpointing."""
  record = {"train_accum": member.accum, "elapsed_s": elapsed}
  loader_state = None if loop.feeder is None else loop.feeder.state()
  if loader_state is not None:
    record["loader"] = loader_state  # grain's iterator state after `step`
  tick = time.perf_counter()
  if loop.stepper.timed:
    member.saved_account = (step, loop.account_now(member))  # what this checkpoint records
    record["accounting"] = member.saved_account[1]
  epochs = loop.epochs
  _save(member.checkpoints, member.run_dir, step, state, forget, record, epochs.policy,
        epochs.pstate, epochs.plan, (epochs.epoch, epochs.epoch_start, epochs.final_step))
  member.saved_steps.add(step)
  loop.charge("checkpoint_seconds", tick, [member])


def _finish(loop: Loop, m: int, step: int, first: int) -> RunResult:
  """Closes member m and, at the final step, writes its forget_scores.npy and summary."""
  member, tick = loop.members[m], time.perf_counter()
  member.checkpoints.close()  # waits for the async saves still writing
  tick = loop.charge("checkpoint_seconds", tick, [member])
  if member.divergence is not None:  # its writer closed when it was retired
    bad_step, bad_loss = member.divergence
    return _diverged_result(member.run_dir, bad_step, bad_loss, bad_step - first + 1,
                            time.time() - loop.start_time)
  member.writer.close()
  loop.charge("eval_seconds", tick, [member])
  final, outcome = member.rows[-1], outcomes.OK
  if step == loop.epochs.final_step:
    # Every phase up to now, the final save and the wait for it included (a summary
    # rewritten after a crash from the final checkpoint adds the resumed call's setup and
    # restore to that checkpoint's accounting instead).
    accounting = _accounting(loop.account_now(member), loop.stepper.timed)
    extra = {"accounting": accounting}
    if loop.stepper.timed:
      log.info("%s: %s", member.desc, describe_accounting(accounting))
    if loop.epochs.dynamic:
      extra.update(_policy_summary(loop.epochs.policy, loop.epochs.epoch,
                                   loop.epochs.num_epochs))
    forget = None if loop.forget is None else loop.stepper.member(loop.forget, m)
    outcome = write_run_outputs(member.paths, loop.config, forget, final, member.model_seed,
                                member.data_seed, member.schedule,
                                outcomes.chance_of(loop.dataset), member.desc,
                                final_step=step, extra=extra)
  return RunResult(member.run_dir, step, final["test_accuracy"], final["test_loss"],
                   max(0, step - first + 1), time.time() - loop.start_time, outcome)


def _full_data_account(step: int, batch_size: int) -> dict:
  """The compute accounting of a run after `step` full-data steps (no pruning, no
  re-scoring: the counts follow from the step; the per-phase seconds are not split)."""
  return {"optimizer_steps": step, "train_examples": step * batch_size,
          "scored_examples": 0, "score_seconds": 0.0}


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


def _with_total_steps(optimizer_config: OptimizerConfig, config: TrainConfig) -> OptimizerConfig:
  """The linear schedule decays to 0 at the run's last step unless total_steps is given."""
  if optimizer_config.schedule == "linear" and not optimizer_config.total_steps:
    return dataclasses.replace(optimizer_config, total_steps=config.num_steps)
  return optimizer_config


# The phases of a run's wall time, each timed directly (train_run's docstring). compile:
# the first step of each session (it compiles, or waits for a step a previous run of the
# process compiled), left out of train_seconds so runs compare.
PHASES = ("setup_seconds", "compile_seconds", "data_seconds", "train_seconds",
          "score_seconds", "eval_seconds", "checkpoint_seconds")
_NO_ACCOUNTING = {"optimizer_steps": 0, "train_examples": 0, "scored_examples": 0,
                  **{phase: 0.0 for phase in PHASES}}
ACCOUNTING_FIELDS = ("optimizer_steps", "train_examples", "scored_examples", "train_seconds",
                     "score_seconds")


def _accounting(account: dict, timed: bool = True) -> dict:
  """The summary's accounting from `account` (Loop.account_now): counters, each phase's
  seconds, wall_seconds, phases_seconds (their sum) and unaccounted_seconds = wall -
  phases. An untimed stepper (an ensemble: its members' seconds are not split) records
  train_seconds = its wall seconds and 0 for every other phase."""
  wall = float(account["wall_seconds"])
  if not timed:
    return {**account, **{k: 0.0 for k in PHASES}, "train_seconds": round(wall, 3),
            "wall_seconds": round(wall, 3), "timed": False}
  phases = sum(float(account.get(k, 0.0)) for k in PHASES)
  return {**account, **{k: round(float(account.get(k, 0.0)), 3) for k in PHASES},
          "wall_seconds": round(wall, 3), "phases_seconds": round(phases, 3),
          "unaccounted_seconds": round(wall - phases, 3)}


def describe_accounting(accounting: dict) -> str:
  """The run log's line of a timed accounting: wall = each phase + unaccounted."""
  parts = " + ".join(f"{k[:-len('_seconds')]} {accounting[k]:.2f}" for k in PHASES)
  return (f"wall {accounting['wall_seconds']:.2f} s = {parts} + unaccounted "
          f"{accounting['unaccounted_seconds']:.3f} s")


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
                num_epochs: Optional[int], epoch_start: int, timed: bool = True):
  """Asks the policy for epoch `epoch`'s plan (timed as scoring); returns (pstate, plan,
  final step) where the final step is known once the last epoch is planned."""
  tick = time.perf_counter()
  pstate, plan = policy.plan_epoch(pstate, epoch, model_variables(state))
  if timed:
    account["score_seconds"] += time.perf_counter() - tick
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
  forget_stats = forget_of(forget)
  if forget_stats is not None:
    artifacts.write_npy(paths["forget_scores"], np.asarray(forgetting_scores(forget_stats)))
  for name, values in dynamics_scores(forget).items():  # the training-dynamics scores
    os.makedirs(paths["dynamics"], exist_ok=True)
    artifacts.write_npy(os.path.join(paths["dynamics"], f"{name}.npy"), values)
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


_COMPILED: dict = {}


def _compiled(train_step, eval_step, model, optimizer_config, steps_per_epoch, dataset, augment):
  """(step, eval_step) jitted, shared by runs with the same model/optimizer/normalization, so
  a sweep of many runs compiles each distinct step once.

  step(state, forget, batch) -> (state, forget, metrics): train_step and the forgetting
  update as ONE program (forget None: train_step alone). Two programs would deadlock on a
  multi-device CPU mesh: the update of step k (which gathers the batch-sharded ids) does
  not depend on step k+1 (which all-reduces the gradients), XLA:CPU runs them at once,
  and with as few execution threads as cores each can hold a thread waiting at its
  collective's rendezvous for the other device's half, which has no thread left to run
  (2 CPU devices on 2 cores, the cifar10_tpu notebook: "all gather ... may be stuck").
  """
  key = (repr(model), optimizer_config, steps_per_epoch, task_for(dataset, augment))
  if key not in _COMPILED:
    if len(_COMPILED) > 32:
      _COMPILED.clear()
    _COMPILED[key] = (_train_and_forget_step(train_step), jax.jit(eval_step))
  return _COMPILED[key]


def _train_and_forget_step(train_step) -> Callable:
  """step(state, tracked, batch): the train step and the update of what it tracks
  (ForgetStats, or train/dynamics.Tracked: forgetting + training-dynamics scores); the
  logits and labels only feed that update (not returned)."""
  def returned(metrics):  # the logits and labels stay inside the program
    return {k: v for k, v in metrics.items() if k not in ("logits", "labels")}

  def lean(state, batch):
    state, metrics = train_step(state, batch)
    return state, returned(metrics)

  def with_forgetting(state, forget, batch):
    state, metrics = train_step(state, batch)
    return state, update_tracked(forget, metrics), returned(metrics)

  train_alone = jax.jit(lean, donate_argnums=0)
  train_and_forget = jax.jit(with_forgetting, donate_argnums=(0, 1))

  def step(state, forget, batch):
    if forget is None:
      state, metrics = train_alone(state, batch)
      return state, None, metrics
    return train_and_forget(state, forget, batch)
  return step


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
  forget = init_tracked(dataset.num_train, dataset.num_classes, config.track_forgetting,
                        config.track_dynamics, config.dynamics_window)
  checkpoints = RunCheckpoints(run_paths(run_dir)["checkpoints"])
  try:
    state, forget, _ = checkpoints.restore(step, state, forget)
  finally:
    checkpoints.close()
  return state, forget
