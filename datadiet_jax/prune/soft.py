"""Soft pruning with loss rescaling (InfoBatch, Qin et al. ICLR 2024) as a subset policy.

Every example keeps its latest training loss (the train step's per-example losses, no
extra pass; an example not seen yet counts as high-loss and is never pruned). At the
start of every epoch, the examples whose loss is below the mean loss of the examples
seen so far ("well learned") are each dropped independently with probability r; the
kept ones among them get loss weight 1 / (1 - r), all others weight 1, so the expected
gradient of an epoch equals the full-data one. The train step averages the weighted loss
over the batch size, as InfoBatch does. From epoch floor(delta * num_epochs) on (the
last (1 - delta) of training: annealing) every example is used with weight 1.

Differences from the original code, chosen for exactness: it keeps exactly
int((1 - r) * n_low) of the n_low well-learned examples (not an independent draw per
example) and starts every score at 3.0 (which enters the mean); here each well-learned
example is kept with probability 1 - r (exactly unbiased) and unseen examples are left
out of the mean. The draws come from a Generator seeded by (seed, epoch): a pure
function of the epoch, so a resumed run draws the same subsets.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from datadiet_jax.train.subset import EpochPlan


@dataclasses.dataclass(frozen=True)
class InfoBatchConfig:
  prune_ratio: float = 0.5   # r in [0, 1)
  delta: float = 0.875       # prune during the first floor(delta * num_epochs) epochs
  num_epochs: int = 1
  seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.prune_ratio < 1.0:
      raise ValueError(f"--infobatch_r={self.prune_ratio} must lie in [0, 1) (the probability "
                       "of dropping a well-learned example; 1 would weight kept ones by 1/0)")
    if not 0.0 < self.delta <= 1.0:
      raise ValueError(f"--infobatch_delta={self.delta} must lie in (0, 1] (the fraction of "
                       "epochs that prune; the rest anneal on all data)")
    if self.num_epochs < 1:
      raise ValueError(f"InfoBatch needs num_epochs >= 1, got {self.num_epochs}")

  @property
  def pruning_epochs(self) -> int:
    return int(math.floor(self.delta * self.num_epochs + 1e-9))


@dataclasses.dataclass(frozen=True)
class InfoBatchState:
  """losses: f32[N] latest training loss of every example (+inf: not seen yet)."""

  losses: np.ndarray


def init_infobatch_state(num_examples: int) -> InfoBatchState:
  return InfoBatchState(np.full(num_examples, np.inf, np.float32))


def observe_losses(state: InfoBatchState, ids: np.ndarray, losses: np.ndarray) -> InfoBatchState:
  """Overwrites the losses of examples `ids` (i32[B]) with `losses` (f32[B])."""
  updated = state.losses.copy()
  updated[np.asarray(ids)] = np.asarray(losses, np.float32)
  return InfoBatchState(updated)


def well_learned(losses: np.ndarray) -> np.ndarray:
  """bool[N]: seen examples whose loss is below the mean loss of the seen examples."""
  seen = np.isfinite(losses)
  if not seen.any():
    return np.zeros(losses.shape, bool)
  return seen & (losses < losses[seen].astype(np.float64).mean())


def plan_infobatch_epoch(config: InfoBatchConfig, state: InfoBatchState,
                         epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids i32[M] kept this epoch, sorted, weights f32[M]) for epoch `epoch` (0-indexed)."""
  n = len(state.losses)
  if epoch >= config.pruning_epochs or config.prune_ratio == 0.0:
    return np.arange(n, dtype=np.int32), np.ones(n, np.float32)
  low = well_learned(state.losses)
  uniform = np.random.default_rng([int(config.seed), int(epoch)]).random(n)
  kept = ~(low & (uniform < config.prune_ratio))
  ids = np.flatnonzero(kept).astype(np.int32)
  weights = np.where(low[ids], np.float32(1.0 / (1.0 - config.prune_ratio)),
                     np.float32(1.0)).astype(np.float32)
  return ids, weights


@dataclasses.dataclass(frozen=True)
class InfoBatchPolicy:
  """The subset policy (train/subset.py) of InfoBatch over `num_examples` examples."""

  config: InfoBatchConfig
  num_examples: int
  needs_losses = True

  def init_state(self) -> InfoBatchState:
    return init_infobatch_state(self.num_examples)

  def plan_epoch(self, state, epoch, variables):
    ids, weights = plan_infobatch_epoch(self.config, state, epoch)
    return state, EpochPlan(ids, weights)

  def observe(self, state, ids, losses):
    return observe_losses(state, ids, losses)

  def expected_epoch_sizes(self, num_epochs: int) -> list[int]:
    """For the lr schedule only: assumes half of the seen examples are below the mean (an
    approximation; the actual sizes follow the loss distribution)."""
    n, c = self.num_examples, self.config
    pruned = int(round(n * (1 - c.prune_ratio / 2)))
    return [n if e == 0 or e >= c.pruning_epochs else pruned for e in range(num_epochs)]

  def describe(self) -> dict:
    return {"policy": "infobatch", **dataclasses.asdict(self.config)}
