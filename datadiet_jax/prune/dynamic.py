"""Periodic re-scoring ("NLU on Data Diets", Attendu & Corbeil 2023) as a subset policy.

Train on all examples for `warmup_epochs`; then at epoch `warmup_epochs` and every
`rescore_every` epochs after it, score *every* training example with the current model
(one jitted, chunked, eval-mode pass: scores/current_model.py) and train on the kept
subset until the next scoring. Pruned examples can come back at the next scoring.

  score s_t (f32[N], higher = harder)  ->  optional smoothing  ->  selection

Smoothing (the paper's NLU setting: alpha 0.8, k 1.0): an exponential moving average
m_t = m_{t-1} + alpha (s_t - m_{t-1}) (m_1 = s_1; alpha is the weight of the newest
scoring, pandas' `ewm(alpha, adjust=False)`) and its running variance
v_t = (1 - alpha) (v_{t-1} + alpha (s_t - m_{t-1})^2) (v_1 = 0); the selection uses
m_t + k sqrt(v_t). alpha = 1 (the default) uses the latest scores only, as the paper's
GLUE runs. (The original's std is pandas' bias-corrected EW std; this is the plain
exponentially weighted one, which needs only m and v, not the whole score history.)

Selection: keep fraction `keep_fraction` (floor(N f) examples) with the static pruning
strategies of prune/select.py: hardest, easiest, offset (skip the `offset_fraction`
hardest), class_balanced (hardest per class), random. `score="random"` is the control: a
fresh uniform subset of the same size at each re-scoring, no scoring pass (RS2 *with*
replacement across rounds, below).

`score="rs2"`: Repeated Sampling of Random Subsets *without* replacement (Okanovic et al.
2023, "Repeated Random Sampling for Minimizing the Time-to-Accuracy of Learning", ICLR
2024, Algorithm 1, the variant the paper recommends). Round x (the x-th re-scoring epoch,
x = 0, 1, ...) trains on S = floor(N r) examples, r = keep_fraction: the data are
visited in passes, pass p in a fresh uniform permutation pi_p of the N ids, and a pass
holds R = floor(N / S) rounds; round x is pass p = x // R, chunk j = x % R:

  subset_x = pi_p[j S : (j + 1) S]

so within a pass every round's subset is disjoint from the others and no example is
seen twice before every one of the R S examples the pass deals has been seen once; the
N - R S ids left at the end of a pass's permutation wait for the next pass (as Modyn's
RS2 downsampler deals a pass). No scoring pass.
pi_p is drawn from a RandomState seeded by (seed, pass), so subset_x is a pure function
of (seed, x), and x of the epoch. With r = 1 it is plain full-data training.

Random draws use a RandomState seeded by (seed, epoch), so they are a pure function of
the epoch and a resumed run draws the same subsets. The state (current subset, EMA,
variance, number of scorings) is a frozen dataclass of arrays, saved with every
checkpoint by the training loop.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from datadiet_jax.prune.select import select
from datadiet_jax.prune.validate import fraction_count
from datadiet_jax.scores.current_model import score_with_variables
from datadiet_jax.scores.registry import SCORE_NAMES
from datadiet_jax.train.subset import EpochPlan

STRATEGIES = ("hardest", "easiest", "offset", "class_balanced", "random")
RANDOM = "random"
RS2 = "rs2"
UNSCORED = (RANDOM, RS2)  # selections that need no scoring pass


@dataclasses.dataclass(frozen=True)
class DynamicConfig:
  """Periodic re-scoring. See the module docstring; validated on construction."""

  score: str = "el2n"           # a model score (el2n, loss, entropy, ...), "random" or "rs2"
  keep_fraction: float = 0.5    # in (0, 1]
  warmup_epochs: int = 1        # >= 0 epochs on all data before the first scoring
  rescore_every: int = 1        # >= 1 epochs between scorings
  strategy: str = "hardest"
  ema_alpha: float = 1.0        # in (0, 1]; 1 = latest scores only
  ema_std_k: float = 0.0        # >= 0: add k x the running std
  offset_fraction: float = 0.1  # "offset": skip this fraction of the hardest
  seed: int = 0
  score_batch_size: int = 128

  def __post_init__(self):
    if self.score not in UNSCORED and self.score not in SCORE_NAMES:
      raise ValueError(f"--dynamic_method: unknown score '{self.score}'; use one of "
                       f"{', '.join(SCORE_NAMES + UNSCORED)}")
    if not 0.0 < self.keep_fraction <= 1.0:
      raise ValueError(f"--dynamic_keep_fraction={self.keep_fraction} must lie in (0, 1] "
                       "(the fraction of the training set kept after each re-scoring)")
    if self.warmup_epochs < 0:
      raise ValueError(f"--dynamic_warmup_epochs={self.warmup_epochs} must be >= 0")
    if self.rescore_every < 1:
      raise ValueError(f"--dynamic_rescore_every={self.rescore_every} must be >= 1 epoch "
                       "(use a period >= the number of epochs to score only once)")
    if self.strategy not in STRATEGIES:
      raise ValueError(f"--dynamic_strategy: unknown strategy '{self.strategy}'; use one of "
                       f"{', '.join(STRATEGIES)}")
    if not 0.0 < self.ema_alpha <= 1.0:
      raise ValueError(f"--dynamic_ema_alpha={self.ema_alpha} must lie in (0, 1] (1: no "
                       "smoothing, the latest scores only)")
    if self.ema_std_k < 0:
      raise ValueError(f"--dynamic_ema_std_k={self.ema_std_k} must be >= 0")
    if not 0.0 <= self.offset_fraction < 1.0:
      raise ValueError(f"offset fraction {self.offset_fraction} must lie in [0, 1)")

  def check_training(self, num_epochs: int) -> None:
    """Raises ValueError if the warm-up leaves no epoch to prune in `num_epochs`."""
    if self.warmup_epochs >= num_epochs:
      raise ValueError(f"--dynamic_warmup_epochs={self.warmup_epochs} leaves no pruned epoch "
                       f"in a {num_epochs}-epoch run; use fewer warm-up epochs or train longer")

  def is_scoring_epoch(self, epoch: int) -> bool:
    return epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.rescore_every == 0

  def round_of(self, epoch: int) -> int:
    """The index x = 0, 1, ... of the scoring (RS2 round) at scoring epoch `epoch`."""
    return (epoch - self.warmup_epochs) // self.rescore_every


@dataclasses.dataclass(frozen=True)
class RescoreState:
  """kept: i32[K] the current subset (all ids before the first scoring);
  mean, variance: f32[N] smoothed scores and their running variance (0 before);
  num_scorings: scorings so far."""

  kept: np.ndarray
  mean: np.ndarray
  variance: np.ndarray
  num_scorings: int


def init_rescore_state(num_examples: int) -> RescoreState:
  return RescoreState(kept=np.arange(num_examples, dtype=np.int32),
                      mean=np.zeros(num_examples, np.float32),
                      variance=np.zeros(num_examples, np.float32), num_scorings=0)


def smooth(state: RescoreState, scores: np.ndarray, alpha: float,
           std_k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean f32[N], variance f32[N], selection scores f32[N]) after scoring `scores` f32[N]."""
  scores = np.asarray(scores, np.float32)
  if state.num_scorings == 0:
    mean, variance = scores, np.zeros_like(scores)
  else:
    diff = scores - state.mean
    mean = (state.mean + np.float32(alpha) * diff).astype(np.float32)
    variance = ((1 - np.float32(alpha)) * (state.variance + np.float32(alpha) * diff * diff)
                ).astype(np.float32)
  effective = mean + np.float32(std_k) * np.sqrt(variance) if std_k else mean
  return mean, variance, effective.astype(np.float32)


def epoch_seed(seed: int, epoch: int) -> int:
  """A RandomState seed in [0, 2**32) that is a pure function of (seed, epoch)."""
  return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def rs2_pass_seed(seed: int, pass_index: int) -> int:
  """The RandomState seed of RS2 pass `pass_index`: a pure function of (seed, pass), apart
  from epoch_seed's (a tag in the sequence), so the two never share a stream."""
  return int(np.random.SeedSequence([int(seed), int(pass_index), 2]).generate_state(1)[0])


def rs2_subset(num_examples: int, keep: int, seed: int, round_index: int) -> np.ndarray:
  """i32[keep] sorted ids of RS2-without-replacement round `round_index` (module docstring):
  chunk j = x % R of pass p = x // R's permutation, R = floor(N / keep)."""
  if not 1 <= keep <= num_examples:
    raise ValueError(f"RS2 round size {keep} must lie in [1, {num_examples}]")
  rounds_per_pass = num_examples // keep
  pass_index, chunk = divmod(int(round_index), rounds_per_pass)
  order = np.random.RandomState(rs2_pass_seed(seed, pass_index)).permutation(num_examples)
  return np.sort(order[chunk * keep:(chunk + 1) * keep]).astype(np.int32)


def select_subset(config: DynamicConfig, scores: Optional[np.ndarray], labels: np.ndarray,
                  epoch: int) -> np.ndarray:
  """i32[K] sorted kept ids, K = floor(N keep_fraction), from selection scores f32[N]."""
  n = len(labels)
  keep = max(1, fraction_count(n, config.keep_fraction))
  seed = epoch_seed(config.seed, epoch)
  if config.score == RS2:
    return rs2_subset(n, keep, config.seed, config.round_of(epoch))
  if config.score == RANDOM or config.strategy == "random":
    return select("random", None, labels, keep, seed)
  if config.strategy == "hardest":
    return select("keep_hardest", scores, labels, keep)
  if config.strategy == "easiest":
    return select("keep_easiest", scores, labels, keep)
  if config.strategy == "offset":
    offset = min(int(round(config.offset_fraction * n)), n - keep)
    return select("offset", scores, labels, keep, offset=offset)
  return select("class_balanced", scores, labels, keep, seed, strategy="hardest")


def rescore(config: DynamicConfig, state: RescoreState, scores: Optional[np.ndarray],
            labels: np.ndarray, epoch: int) -> RescoreState:
  """The state after a scoring at `epoch` (scores None for random and RS2: no scoring)."""
  if scores is None:
    return dataclasses.replace(state, kept=select_subset(config, None, labels, epoch),
                               num_scorings=state.num_scorings + 1)
  mean, variance, effective = smooth(state, scores, config.ema_alpha, config.ema_std_k)
  return RescoreState(kept=select_subset(config, effective, labels, epoch), mean=mean,
                      variance=variance, num_scorings=state.num_scorings + 1)


@dataclasses.dataclass(frozen=True)
class PeriodicRescoring:
  """The subset policy (train/subset.py) of periodic re-scoring.

  scorer: fn(variables) -> f32[N] scores of all training examples under the current
  model (None for score="random" and "rs2"); labels: i32[N] train labels.
  """

  config: DynamicConfig
  labels: np.ndarray
  scorer: Optional[Callable[[dict], np.ndarray]] = None

  def init_state(self) -> RescoreState:
    return init_rescore_state(len(self.labels))

  def plan_epoch(self, state: RescoreState, epoch: int, variables):
    if not self.config.is_scoring_epoch(epoch):
      return state, EpochPlan(state.kept)
    if self.config.score in UNSCORED:
      state = rescore(self.config, state, None, self.labels, epoch)
      return state, EpochPlan(state.kept)
    scores = self.scorer(variables)
    state = rescore(self.config, state, scores, self.labels, epoch)
    return state, EpochPlan(state.kept, scored_examples=len(self.labels))

  def observe(self, state, ids, losses):
    return state

  def expected_epoch_sizes(self, num_epochs: int) -> list[int]:
    n = len(self.labels)
    keep = max(1, fraction_count(n, self.config.keep_fraction))
    return [n if e < self.config.warmup_epochs else keep for e in range(num_epochs)]

  def describe(self) -> dict:
    return {"policy": "periodic_rescoring", **dataclasses.asdict(self.config)}


def make_dynamic_policy(config: DynamicConfig, model, dataset) -> PeriodicRescoring:
  """Periodic re-scoring of `dataset`'s training examples with `model`'s current variables
  (text with `trim_multiple` set, as the train batches are: in length buckets)."""
  def scorer(variables):
    return score_with_variables(config.score, model, variables, dataset.train_inputs(),
                                dataset.train_targets(), getattr(dataset, "mean", None),
                                getattr(dataset, "std", None), config.score_batch_size,
                                trim_multiple=getattr(dataset, "trim_multiple", 0))

  return PeriodicRescoring(config, np.asarray(dataset.train_labels),
                           None if config.score in UNSCORED else scorer)
