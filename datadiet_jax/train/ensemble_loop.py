"""Training an ensemble: M runs of one configuration in ONE jitted step over a member axis.

Every member is a full run (its own model seed, data seed, BatchSchedule, augmentation
key, optimizer state, BatchNorm statistics and forgetting statistics), stacked along a
leading axis of length M. One compiled step advances all members:

  strategy "vmap": jax.vmap(train_step) -- one batched program; wins on accelerators and
    for small models. Vmapped convolutions become grouped convolutions, which XLA:CPU runs
    poorly (4 SimpleCNN members: 11.4 s/step vs 2.8 s stepped one after another).
  strategy "map": the members one after another inside the same jitted step (a static
    loop over members; a lax.map/scan body ran ~5-7x slower on XLA:CPU) -- M copies of the
    program a single run compiles, in one executable.
  "auto": "map" on CPU, "vmap" on GPU/TPU (and whenever the members axis is sharded).

Outputs stay per run: member m writes run_dirs[m]/checkpoints, metrics.csv,
summary.json and forget_scores.npy exactly as `train_run` does, so the score CLI and
the Figure-1 pipeline read them unchanged, and a member can even be resumed alone by
`train_run`. Resume is exact: each member restores its latest intact checkpoint; when
the members stopped at different steps, all restart from the newest step every member
holds (checkpoints that already exist are not written again).

Divergence (as `train_run`, train/outcome.py): a vector of per-member trackers on device
records each member's first step with a non-finite train loss; it is read at the steps a
lone run reads its tracker (evaluations, saves, the last step), and at save steps each
member's parameters are also checked for non-finite values. A member found diverged is
retired there: its summary.json gets the lone run's record (`outcome: diverged`,
`diverged_step`, `diverged_loss`, same step and loss), it writes no later metrics row,
TensorBoard point or checkpoint, and the other members go on. Its slot keeps stepping
(on non-finite numbers) until the ensemble ends, rather than being masked: the members
share no operation (strategy "map": separate copies of the lone step; "vmap": batched
ops whose member slices depend only on that member's slice -- BatchNorm statistics,
losses and gradients are per member), so nothing of it reaches another member, and the
loop never reads it again. When every member has diverged the loop stops.

TensorBoard: each member writes the lone run's scalars (metrics_writer.py) to
run_dirs[m]/tensorboard/ (switch: TrainConfig.tensorboard), resuming as a lone run does.

Sharding: with a 2-D mesh ("members", "data") the stacked state is split over the
members axis and every member's batch over the data axis (see sharding.ensemble_mesh).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from datadiet_jax import artifacts
from datadiet_jax.checkpoint import RunCheckpoints, is_save_step
from datadiet_jax.data.dataset import Dataset
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.train import outcome as outcomes
from datadiet_jax.train.forgetting import init_forget_stats, update_forget_stats
from datadiet_jax.train.loop import (RunResult, TrainConfig, _accounting, _compiled,
                                     _diverged_result, _eval_row, _interval, _metric_fields,
                                     _params_finite, _read_rows, _schedule_epoch,
                                     _track_nonfinite, build_run, is_finished, run_paths,
                                     write_run_outputs)
from datadiet_jax.train.metrics_writer import open_run_writer
from datadiet_jax.train.optimizer import OptimizerConfig, learning_rate_schedule
from datadiet_jax.train.state import num_params

log = logging.getLogger("datadiet_jax")

STRATEGIES = ("auto", "vmap", "map")


def resolve_strategy(strategy: str, backend: Optional[str] = None, mesh=None) -> str:
  """'auto' -> 'map' on CPU, 'vmap' elsewhere or when members are sharded over devices."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown ensemble strategy '{strategy}'; choose one of "
                     f"{', '.join(STRATEGIES)}")
  if strategy != "auto":
    return strategy
  if mesh is not None and mesh.shape.get("members", 1) > 1:
    return "vmap"
  return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"


def make_ensemble_step(train_step, strategy: str, track_forgetting: bool):
  """Returns step(states, forgets, batches) -> (states, forgets, metrics) over M members.

  states: TrainState with leading axis M; forgets: ForgetStats with leaves [M, N] (or
  None); batches: {images u8[M, B, H, W, C], labels i32[M, B], example_ids i32[M, B]}.
  metrics: {loss f32[M], accuracy f32[M]}. Unjitted; `strategy` is 'vmap' or 'map'.
  """

  def member_step(state, forget, batch):
    state, metrics = train_step(state, batch)
    if track_forgetting:
      forget = update_forget_stats(forget, metrics["example_ids"], metrics["correct"])
    return state, forget, {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}

  if strategy == "vmap":
    return jax.vmap(member_step)
  if strategy == "map":
    def mapped(states, forgets, batches):
      # A static loop (no while loop: XLA:CPU ran a lax.map/scan body ~5-7x slower than the
      # same program outside a loop), so the members become N copies of the lone step.
      num_members = jax.tree_util.tree_leaves(batches)[0].shape[0]
      outs = [member_step(*jax.tree_util.tree_map(lambda x: x[m], (states, forgets, batches)))
              for m in range(num_members)]
      return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
    return mapped
  raise ValueError(f"strategy must be 'vmap' or 'map' here, got '{strategy}'")


def member_bytes(state, forget) -> int:
  """Estimated device bytes one member needs while training: params, gradients and
  updates (3 x params), optimizer slots, BatchNorm statistics and forgetting statistics.
  Activations are not counted (see `members_that_fit`'s headroom)."""
  def size(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
  return (3 * size(state.params) + size(state.opt_state) + size(state.batch_stats)
          + (size(forget) if forget is not None else 0))


def available_bytes(device=None) -> int:
  """Free memory of `device` (accelerator: bytes_limit - bytes_in_use; CPU: free RAM)."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def members_that_fit(per_member_bytes: int, available: int, headroom: float = 0.25) -> int:
  """How many members fit in `headroom` x `available` bytes (at least 1: a single run
  has no other way to train). The other 75% is left for activations and XLA buffers."""
  return max(1, int(headroom * available) // max(1, per_member_bytes))


@dataclasses.dataclass
class _Member:
  """Host-side bookkeeping of one member (everything that is not a device array)."""
  run_dir: str
  model_seed: int
  data_seed: int
  schedule: object
  paths: dict
  checkpoints: RunCheckpoints
  saved_steps: set
  rows: list
  elapsed_before: float
  accum: dict
  writer: object = None
  divergence: Optional[tuple] = None  # (step, train loss) once it diverged


def train_ensemble(run_dirs: Sequence[str], model, dataset: Dataset,
                   optimizer_config: OptimizerConfig, config: TrainConfig,
                   seeds: Sequence[tuple[int, int]], example_ids=None, progress: bool = True,
                   stop_after_step: Optional[int] = None, desc: str = "ensemble",
                   strategy: str = "auto", mesh=None) -> list[RunResult]:
  """Trains (or resumes, or skips if finished) the runs run_dirs[m] with seeds[m] =
  (model_seed, data_seed) together; returns one RunResult per run, in order.

  example_ids: None (all examples), one i32[K] array shared by every member, or a list of
    one array per member (all of the same length, so the members share steps per epoch).
  strategy: 'auto' | 'vmap' | 'map' (see the module docstring).
  mesh: None, or a 2-D jax.sharding Mesh with axes ('members', 'data'); M must divide
    over 'members' and the batch size over 'data'.
  """
  start_time = time.time()
  if len(run_dirs) != len(seeds):
    raise ValueError(f"{len(run_dirs)} run folders but {len(seeds)} seed pairs")
  ids_of = (list(example_ids) if isinstance(example_ids, (list, tuple))
            else [example_ids] * len(run_dirs))
  results: dict[int, RunResult] = {}
  todo, chance = [], outcomes.chance_of(dataset)
  for m, run_dir in enumerate(run_dirs):
    if is_finished(run_dir, config.num_steps):
      summary = artifacts.read_json(run_paths(run_dir)["summary"])
      log.info("%s: %s already finished, skipping", desc, run_dir)
      if summary.get("outcome") == outcomes.DIVERGED:
        results[m] = _diverged_result(run_dir, summary["diverged_step"],
                                      summary["diverged_loss"], 0, 0.0)
      else:
        results[m] = RunResult(run_dir, config.num_steps, summary["test_accuracy"],
                               summary["test_loss"], 0, 0.0,
                               outcomes.outcome_of_summary(summary, chance))
    else:
      todo.append(m)
  if todo:
    trained = _train_members([run_dirs[m] for m in todo], model, dataset, optimizer_config,
                             config, [seeds[m] for m in todo], [ids_of[m] for m in todo],
                             progress, stop_after_step, desc, strategy, mesh, start_time)
    results.update(zip(todo, trained))
  return [results[m] for m in range(len(run_dirs))]


def _train_members(run_dirs, model, dataset, optimizer_config, config, seeds, ids_of,
                   progress, stop_after_step, desc, strategy, mesh, start_time):
  strategy = resolve_strategy(strategy, mesh=mesh)
  if mesh is not None:
    for name, size in (("members", len(run_dirs)), ("data", config.batch_size)):
      if size % mesh.shape[name]:
        raise ValueError(f"{name} axis of size {size} does not split over the "
                         f"{mesh.shape[name]} devices of mesh axis '{name}'; choose "
                         "--ensemble_members and --batch_size divisible by them")
  built = [build_run(model, dataset, optimizer_config, config, ms, ds, ids)
           for (ms, ds), ids in zip(seeds, ids_of)]
  schedules = [b[1] for b in built]
  steps_per_epoch = schedules[0].steps_per_epoch
  if any(s.steps_per_epoch != steps_per_epoch for s in schedules):
    raise ValueError("ensemble members must train on example sets of one size (they share "
                     "steps per epoch); train runs of different sizes separately")
  schedule_epoch = _schedule_epoch(config, schedules[0])
  _, _, train_step, eval_step = built[0]
  _, eval_step = _compiled(train_step, eval_step, model, optimizer_config, schedule_epoch,
                           dataset, config.augment)
  lr_at = learning_rate_schedule(optimizer_config, schedule_epoch)
  eval_every = _interval(config.eval_every_steps, steps_per_epoch, config.num_steps)
  save_every = _interval(config.save_steps, steps_per_epoch, config.num_steps)

  members, states, forgets = [], [], []
  fresh_forget = init_forget_stats(dataset.num_train) if config.track_forgetting else None
  for run_dir, (model_seed, data_seed), (state, schedule, _, _) in zip(run_dirs, seeds, built):
    os.makedirs(run_dir, exist_ok=True)
    paths = run_paths(run_dir)
    checkpoints = RunCheckpoints(paths["checkpoints"])
    member = _Member(run_dir, model_seed, data_seed, schedule, paths, checkpoints,
                     set(checkpoints.steps()), [], 0.0,
                     {"loss_sum": 0.0, "correct_sum": 0.0, "count": 0})
    members.append(member)
    states.append(state)
    forgets.append(fresh_forget)
  template_state, template_forget = states[0], forgets[0]
  _resume_or_start(members, states, forgets, template_state, template_forget, eval_step,
                   dataset, config, steps_per_epoch, lr_at, desc)

  num_members = len(members)
  for member in members:
    member.writer = open_run_writer(member.run_dir, config.tensorboard, member.rows,
                                    examples_kept=len(member.schedule.example_ids))
  log.info("%s: %d members (%s), %d params each, %d steps/epoch, %d steps", desc, num_members,
           strategy, num_params(template_state.params), steps_per_epoch, config.num_steps)
  stacked_state = stack_trees(states)
  stacked_forget = stack_trees(forgets) if config.track_forgetting else None
  step_fn = _compiled_ensemble_step(train_step, model, optimizer_config, schedule_epoch,
                                    dataset, config, strategy, mesh)
  if mesh is not None:
    stacked_state = _place(stacked_state, mesh, PartitionSpec("members"))
    if stacked_forget is not None:
      stacked_forget = _place(stacked_forget, mesh, PartitionSpec("members"))

  first = int(states[0].step) + 1
  last = config.num_steps if stop_after_step is None else min(config.num_steps, stop_after_step)
  loss_sum = jnp.asarray([m.accum["loss_sum"] for m in members], jnp.float32)
  correct_sum = jnp.asarray([m.accum["correct_sum"] for m in members], jnp.float32)
  count = int(members[0].accum["count"])
  nonfinite = (np.full(num_members, -1, np.int32), np.zeros(num_members, np.float32))
  bar = tqdm.tqdm(total=config.num_steps, initial=first - 1, desc=desc, unit="step",
                  disable=not progress, dynamic_ncols=True, mininterval=1.0)
  session_start = time.time()
  for step in range(first, last + 1):
    ids = np.stack([m.schedule.batch_ids(step) for m in members])  # i32[M, B]
    batch = {**dataset.train_batch(ids), "example_ids": ids}
    if mesh is not None:
      batch = _place(batch, mesh, PartitionSpec("members", "data"))
    stacked_state, stacked_forget, metrics = step_fn(stacked_state, stacked_forget, batch)
    nonfinite = _track_nonfinite(nonfinite, step, metrics["loss"])
    batch_size = ids.shape[1]
    loss_sum = loss_sum + metrics["loss"] * batch_size
    correct_sum = correct_sum + metrics["accuracy"] * batch_size
    count += batch_size
    bar.update(1)
    session = time.time() - session_start
    evaluate_now = step % eval_every == 0 or step == config.num_steps
    save_now = is_save_step(step, config.num_steps, save_every, config.early_save_steps,
                            config.early_step)
    if not (evaluate_now or save_now or step == last):
      continue
    for m, found in _new_divergences(members, nonfinite, step, metrics["loss"],
                                     stacked_state if save_now else None):
      _retire(members[m], found, step, config, steps_per_epoch,
              members[m].elapsed_before + session, optimizer_config, f"{desc} member {m}")
    alive = [m for m, member in enumerate(members) if member.divergence is None]
    if not alive:
      break
    loss_host, correct_host = np.asarray(loss_sum), np.asarray(correct_sum)
    for m in alive:
      member = members[m]
      elapsed = member.elapsed_before + session
      state_m = _member(stacked_state, m)
      if evaluate_now:
        train_stats = (float(loss_host[m]) / max(count, 1), float(correct_host[m]) / max(count, 1))
        member.rows.append(_eval_row(step, step / steps_per_epoch, float(lr_at(step)),
                                     train_stats, eval_step, state_m, dataset, config, elapsed,
                                     _full_data_account(step, config.batch_size)))
        artifacts.write_csv(member.paths["metrics"], member.rows, _metric_fields(member.rows))
        member.writer.write_row(member.rows[-1],
                                examples_kept=len(member.schedule.example_ids))
      if save_now and step not in member.saved_steps:
        accum = ({"loss_sum": 0.0, "correct_sum": 0.0, "count": 0} if evaluate_now else
                 {"loss_sum": float(loss_host[m]), "correct_sum": float(correct_host[m]),
                  "count": count})
        forget_m = _member(stacked_forget, m) if stacked_forget is not None else None
        member.checkpoints.save(step, state_m, forget_m, {"train_accum": accum,
                                                           "elapsed_s": elapsed})
        member.saved_steps.add(step)
    if evaluate_now:
      row = members[alive[0]].rows[-1]
      bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_accuracy']:.3f}")
      loss_sum, correct_sum, count = jnp.zeros_like(loss_sum), jnp.zeros_like(correct_sum), 0
  bar.close()
  results, chance = [], outcomes.chance_of(dataset)
  for m, member in enumerate(members):
    member.checkpoints.close()
    if member.divergence is not None:  # its writer closed when it was retired
      bad_step, bad_loss = member.divergence
      results.append(_diverged_result(member.run_dir, bad_step, bad_loss, bad_step - first + 1,
                                      time.time() - start_time))
      continue
    member.writer.close()
    final = member.rows[-1]
    outcome = outcomes.OK
    if last == config.num_steps:
      forget_m = _member(stacked_forget, m) if stacked_forget is not None else None
      account = {**_full_data_account(last, config.batch_size), "eval_seconds": 0.0,
                 "checkpoint_seconds": 0.0, "compile_seconds": 0.0}
      outcome = write_run_outputs(member.paths, config, forget_m, final, member.model_seed,
                                  member.data_seed, member.schedule,
                                  chance, f"{desc} member {m}",
                                  extra={"accounting": _accounting(account, final["elapsed_s"])})
    results.append(RunResult(member.run_dir, last, final["test_accuracy"], final["test_loss"],
                             max(0, last - first + 1), time.time() - start_time, outcome))
  return results


def _new_divergences(members, tracker, step: int, losses, stacked_state=None):
  """[(m, (step, train loss))] for the live members found diverged at `step`, by the lone
  run's rule (loop._divergence): the first non-finite loss so far, else, when
  `stacked_state` is given (a save step), this step if its update made member m's
  parameters non-finite. tracker: (i32[M] first bad step or -1, f32[M] its loss)."""
  first_step, first_loss = jax.device_get(tracker)
  params_ok = (np.asarray(_members_params_finite(stacked_state.params))
               if stacked_state is not None else None)
  found = []
  for m, member in enumerate(members):
    if member.divergence is not None:
      continue
    if int(first_step[m]) >= 0:
      found.append((m, (int(first_step[m]), float(first_loss[m]))))
    elif params_ok is not None and not bool(params_ok[m]):
      found.append((m, (int(step), float(np.asarray(losses)[m]))))
  return found


_members_params_finite = jax.jit(jax.vmap(_params_finite))


def _retire(member: _Member, divergence: tuple, step: int, config: TrainConfig,
            steps_per_epoch: int, elapsed: float, optimizer_config: OptimizerConfig,
            desc: str) -> None:
  """Ends a diverged member as `train_run` ends a diverged run: its summary.json records
  the divergence (the lone run's fields), and it writes nothing more."""
  bad_step, bad_loss = divergence
  member.divergence = divergence
  log.warning("%s", outcomes.divergence_message(desc, bad_step, bad_loss,
                                                optimizer_config.learning_rate))
  # The lone loop stops at the step that found it (`step`), before counting that step.
  account = {**_full_data_account(step - 1, config.batch_size),
             "eval_seconds": 0.0, "checkpoint_seconds": 0.0, "compile_seconds": 0.0}
  artifacts.write_json(member.paths["summary"], {
      "outcome": outcomes.DIVERGED, "diverged_step": bad_step, "diverged_loss": bad_loss,
      "num_steps": config.num_steps, "final_step": bad_step, "test_accuracy": None,
      "test_loss": None, "model_seed": member.model_seed, "data_seed": member.data_seed,
      "num_train_examples": int(len(member.schedule.example_ids)),
      "steps_per_epoch": steps_per_epoch, "train_seconds": elapsed,
      "accounting": _accounting(account, elapsed)})
  member.writer.close()


def _full_data_account(step: int, batch_size: int) -> dict:
  """The compute accounting of a member after `step` full-data steps (no pruning, no
  re-scoring: the counts follow from the step; the per-phase seconds are not split)."""
  return {"optimizer_steps": step, "train_examples": step * batch_size,
          "scored_examples": 0, "score_seconds": 0.0}


def _resume_or_start(members, states, forgets, template_state, template_forget, eval_step,
                     dataset, config, steps_per_epoch, lr_at, desc) -> None:
  """Fills states/forgets (in place) with every member's checkpoint at one common step.

  A fresh member first evaluates and saves step 0 as `train_run` does. Members that
  stopped at different steps all restart from the newest step every one of them holds.
  """
  latest = []
  for m, member in enumerate(members):
    restored = member.checkpoints.restore_latest_intact(template_state, template_forget)
    if restored is None:
      member.rows = [_eval_row(0, 0.0, float(lr_at(1)), None, eval_step, states[m], dataset,
                               config, 0.0, _full_data_account(0, config.batch_size))]
      artifacts.write_csv(member.paths["metrics"], member.rows, _metric_fields(member.rows))
      member.checkpoints.save(0, states[m], forgets[m],
                              {"train_accum": member.accum, "elapsed_s": 0.0})
      member.saved_steps = set(member.checkpoints.steps())
      latest.append(0)
    else:
      states[m], forgets[m] = restored.state, restored.forget
      _take_record(member, restored.step, restored.record)
      latest.append(restored.step)
  common = min(latest)
  for m, member in enumerate(members):
    if latest[m] != common:
      log.info("%s: %s restarts from step %d (the newest step every member holds)", desc,
               member.run_dir, common)
      states[m], forgets[m], record = member.checkpoints.restore(common, template_state,
                                                                 template_forget)
      _take_record(member, common, record)
    elif common > 0:
      log.info("%s: resuming %s from checkpoint step %d", desc, member.run_dir, common)


def _take_record(member: _Member, step: int, record: dict) -> None:
  member.accum = record.get("train_accum", member.accum)
  member.elapsed_before = float(record.get("elapsed_s", 0.0))
  member.rows = [r for r in _read_rows(member.paths["metrics"]) if int(r["step"]) <= step]
  member.saved_steps = set(member.checkpoints.steps())


def _member(tree, m: int):
  """Member m of a stacked tree, as single-device arrays (what `train_run` checkpoints)."""
  return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x[m])), tree)


def _place(tree, mesh, spec: PartitionSpec):
  sharding = NamedSharding(mesh, spec)

  def put(x):
    x = np.asarray(x)
    for axis, name in enumerate(spec):
      if x.shape[axis] % mesh.shape[name]:
        raise ValueError(f"axis of size {x.shape[axis]} does not split over the "
                         f"{mesh.shape[name]} devices of mesh axis '{name}'; choose "
                         "--ensemble_members and --batch_size divisible by them")
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(put, tree)


_COMPILED_ENSEMBLE: dict = {}


def _compiled_ensemble_step(train_step, model, optimizer_config, schedule_epoch, dataset,
                            config, strategy, mesh):
  """The jitted ensemble step, cached like loop._compiled (one compilation per sweep)."""
  key = (repr(model), optimizer_config, schedule_epoch, dataset.mean.tobytes(),
         dataset.std.tobytes(), config.augment, config.track_forgetting, strategy,
         None if mesh is None else (tuple(mesh.shape.items()), tuple(mesh.devices.flat)))
  if key not in _COMPILED_ENSEMBLE:
    if len(_COMPILED_ENSEMBLE) > 16:
      _COMPILED_ENSEMBLE.clear()
    step = make_ensemble_step(train_step, strategy, config.track_forgetting)
    _COMPILED_ENSEMBLE[key] = jax.jit(step, donate_argnums=(0, 1))
  return _COMPILED_ENSEMBLE[key]
