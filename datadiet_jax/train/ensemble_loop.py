"""Training an ensemble: M runs of one configuration in ONE jitted step over a member axis.

Every member is a full run (its own model seed, data seed, BatchSchedule, augmentation
key, optimizer state, BatchNorm statistics, forgetting statistics and training-dynamics
accumulators, train/dynamics.py), stacked along a
leading axis of length M. One compiled step advances all members:

  strategy "vmap": jax.vmap(train_step) -- one batched program; wins on accelerators and
    for small models. Vmapped convolutions become grouped convolutions, which XLA:CPU runs
    poorly (4 SimpleCNN members: 11.4 s/step vs 2.8 s stepped one after another).
  strategy "map": the members one after another inside the same jitted step (a static
    loop over members; a lax.map/scan body ran ~5-7x slower on XLA:CPU) -- M copies of the
    program a single run compiles, in one executable.
  "auto": "map" on CPU, "vmap" on GPU/TPU (and whenever the members axis is sharded).

Outputs stay per run: member m writes run_dirs[m]/checkpoints, metrics.csv,
summary.json, forget_scores.npy and dynamics/<name>.npy exactly as `train_run` does, so
the score CLI and
the Figure-1 pipeline read them unchanged, and a member can even be resumed alone by
`train_run`. Resume is exact: each member restores its latest intact checkpoint; when
the members stopped at different steps, all restart from the newest step every member
holds (checkpoints that already exist are not written again). The loop is the lone run's
(loop.run_loop); this module plugs in the stacked step (`ensemble_stepper`).

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

import logging
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from datadiet_jax.data.dataset import Dataset
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.train.dynamics import init_tracked, update_tracked
from datadiet_jax.train.loop import (Epochs, Loop, RunResult, Stepper, TrainConfig, _compiled,
                                     _params_finite, _schedule_epoch, build_run, is_finished,
                                     new_member, recorded_result, run_loop)
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


def make_ensemble_step(train_step, strategy: str):
  """Returns step(states, tracked, batches) -> (states, tracked, metrics) over M members.

  states: TrainState with leading axis M; tracked: what the members track (ForgetStats or
  train/dynamics.Tracked, every leaf with a leading axis M: f32/i32[M, N...]), or None (the
  members track nothing: the step trains alone); batches: {images u8[M, B, H, W, C],
  labels i32[M, B], example_ids i32[M, B]}. metrics: {loss f32[M], accuracy f32[M]}. Each
  member's statistics are updated from its own step's logits, as a lone run's
  (`update_tracked`). Unjitted; `strategy` is 'vmap' or 'map'.
  """

  def member_step(state, tracked, batch):
    state, metrics = train_step(state, batch)
    if tracked is not None:  # static: the carry's structure is fixed when traced
      tracked = update_tracked(tracked, metrics)
    return state, tracked, {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}

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
  updates (3 x params), optimizer slots, BatchNorm statistics and what it tracks
  (forgetting, training dynamics: TDDS keeps f32[N, C]).
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
  todo = []
  for m, run_dir in enumerate(run_dirs):
    if is_finished(run_dir, config.num_steps):
      results[m] = recorded_result(run_dir, dataset, f"{desc} member {m}")
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
  """The unfinished members, trained by the one loop (loop.run_loop) over the stacked step."""
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
  members = [new_member(run_dir, model_seed, data_seed, schedule, f"{desc} member {m}")
             for m, (run_dir, (model_seed, data_seed), schedule)
             in enumerate(zip(run_dirs, seeds, schedules))]
  log.info("%s: %d members (%s), %d params each, %d steps/epoch, %d steps", desc,
           len(members), strategy, num_params(built[0][0].params), steps_per_epoch,
           config.num_steps)
  step_fn = _compiled_ensemble_step(train_step, model, optimizer_config, schedule_epoch,
                                    dataset, config, strategy, mesh)
  loop = Loop(
      members=members, stepper=ensemble_stepper(step_fn, mesh), dataset=dataset,
      config=config, epochs=Epochs(None, None, config.num_steps),
      learning_rate=optimizer_config.learning_rate, eval_step=eval_step,
      lr_at=learning_rate_schedule(optimizer_config, schedule_epoch),
      steps_per_epoch=steps_per_epoch, expected_steps=config.num_steps, desc=desc,
      progress=progress, stop_after_step=stop_after_step, start_time=start_time)
  tracked = init_tracked(dataset.num_train, dataset.num_classes, config.track_forgetting,
                         config.track_dynamics, config.dynamics_window)
  return run_loop(loop, [b[0] for b in built], [tracked] * len(built))


def ensemble_stepper(step_fn, mesh=None) -> Stepper:
  """The loop's step over M stacked members (step_fn: the jitted make_ensemble_step), with
  the stacked state (and batches) split over a ('members', 'data') mesh if given."""
  def assemble(states, forgets):
    state = stack_trees(states)
    forget = stack_trees(forgets) if forgets[0] is not None else None
    if mesh is not None:
      state = _place(state, mesh, PartitionSpec("members"))
      forget = _place(forget, mesh, PartitionSpec("members")) if forget is not None else None
    return state, forget

  place = ((lambda batch: batch) if mesh is None else
           (lambda batch: _place(batch, mesh, PartitionSpec("members", "data"))))
  return Stepper(step_fn, stacked=True, timed=False, assemble=assemble, member=_member,
                 params_finite=_members_params_finite, place_batch=place)


_members_params_finite = jax.jit(jax.vmap(_params_finite))


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
         dataset.std.tobytes(), config.augment, config.track_forgetting,
         config.track_dynamics, config.dynamics_window, strategy,
         None if mesh is None else (tuple(mesh.shape.items()), tuple(mesh.devices.flat)))
  if key not in _COMPILED_ENSEMBLE:
    if len(_COMPILED_ENSEMBLE) > 16:
      _COMPILED_ENSEMBLE.clear()
    step = make_ensemble_step(train_step, strategy)
    _COMPILED_ENSEMBLE[key] = jax.jit(step, donate_argnums=(0, 1))
  return _COMPILED_ENSEMBLE[key]
