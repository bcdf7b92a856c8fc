"""Subset policies: which examples (and with which loss weights) each epoch trains on.

The training loop (train/loop.py) asks its policy at the start of every epoch for an
`EpochPlan`, feeds that epoch's batches (a seeded permutation of the plan's ids, the
remainder dropped, as `BatchSchedule`), and reports every step's per-example losses back.
A policy is a small object of pure functions over a frozen state of numpy arrays:

  init_state()                           -> state
  plan_epoch(state, epoch, variables)    -> (state, EpochPlan)   # may score all examples
  observe(state, ids, losses)            -> state                 # per-example train losses
  expected_epoch_sizes(num_epochs)       -> list[int]             # for the lr schedule
  describe()                             -> dict                  # recorded in summary.json

The state (and the current plan) is saved with every checkpoint (`save_policy_state`), so
a resumed run continues with the same subset, score history and running losses; the
random draws of a policy are a pure function of (its seed, the epoch), so no RNG state is
carried. Static training (a fixed subset, all weights 1) is `FixedSubset`.

Policies that score examples live in datadiet_jax.prune (dynamic.py: periodic
re-scoring, soft.py: InfoBatch); this module only defines the interface the loop uses.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Protocol

import numpy as np

from datadiet_jax import artifacts


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """What one epoch trains on.

  ids: i32[M] dataset ids (sorted or not; the loop permutes them with the data seed).
  weights: f32[M] per-example loss weights aligned with `ids`, or None (all 1: the batch
    then carries no weights, the unweighted step).
  scored_examples: examples forwarded to score before this epoch (compute accounting).
  """

  ids: np.ndarray
  weights: Optional[np.ndarray] = None
  scored_examples: int = 0


class SubsetPolicy(Protocol):
  def init_state(self) -> Any: ...
  def plan_epoch(self, state, epoch: int, variables) -> tuple[Any, EpochPlan]: ...
  def observe(self, state, ids: np.ndarray, losses: np.ndarray) -> Any: ...
  def expected_epoch_sizes(self, num_epochs: int) -> list[int]: ...
  def describe(self) -> dict: ...


@dataclasses.dataclass(frozen=True)
class FixedSubset:
  """The static case: the same ids every epoch, weight 1 (what train_run does by default)."""

  example_ids: np.ndarray

  def init_state(self):
    return None

  def plan_epoch(self, state, epoch, variables):
    return state, EpochPlan(self.example_ids)

  def observe(self, state, ids, losses):
    return state

  def expected_epoch_sizes(self, num_epochs):
    return [len(self.example_ids)] * num_epochs

  def describe(self):
    return {"policy": "fixed", "num_examples": int(len(self.example_ids))}


def state_arrays(state) -> dict:
  """A policy state (a frozen dataclass of arrays/scalars, or None) -> {name: array}."""
  if state is None:
    return {}
  return {f.name: np.asarray(getattr(state, f.name)) for f in dataclasses.fields(state)}


def state_from_arrays(like, arrays: dict):
  """Rebuilds a state of the type of `like` from `state_arrays` output (exact dtypes)."""
  if like is None:
    return None
  values = {}
  for f in dataclasses.fields(like):
    template = getattr(like, f.name)
    value = arrays[f.name]
    values[f.name] = value if isinstance(template, np.ndarray) else value.item()
  return type(like)(**values)


def policy_path(run_dir: str, step: int) -> str:
  return os.path.join(run_dir, "policy", f"step_{int(step)}.npz")


def save_policy_state(run_dir: str, step: int, state, plan: EpochPlan, progress: dict) -> None:
  """Writes policy/step_<k>.npz atomically: the state, the current plan, the loop progress."""
  arrays = {f"state.{k}": v for k, v in state_arrays(state).items()}
  arrays["plan.ids"] = np.asarray(plan.ids, np.int32)
  if plan.weights is not None:
    arrays["plan.weights"] = np.asarray(plan.weights, np.float32)
  arrays["plan.scored_examples"] = np.asarray(plan.scored_examples, np.int64)
  for key, value in progress.items():
    arrays[f"progress.{key}"] = np.asarray(value)
  path = policy_path(run_dir, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with artifacts.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


def load_policy_state(run_dir: str, step: int, state_like) -> tuple[Any, EpochPlan, dict]:
  """Reads what `save_policy_state` wrote at `step`: (state, plan, progress)."""
  path = policy_path(run_dir, step)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the subset-policy state of checkpoint step "
                            f"{step}; delete that checkpoint step or use a fresh run folder")
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  state = state_from_arrays(state_like, {k[len("state."):]: v for k, v in arrays.items()
                                         if k.startswith("state.")})
  plan = EpochPlan(arrays["plan.ids"], arrays.get("plan.weights"),
                   int(arrays["plan.scored_examples"]))
  progress = {k[len("progress."):]: v.item() for k, v in arrays.items()
              if k.startswith("progress.")}
  return state, plan, progress
