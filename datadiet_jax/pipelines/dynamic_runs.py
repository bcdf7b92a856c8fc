"""N seeded runs trained with one dynamic data-pruning policy (experiments' --mode=dynamic).

Each run r (seeds_of(r)) trains into <workdir>/runs/run_<r>/ with its own policy: a score
re-scored every `rescore_every` epochs after `warmup_epochs`, keeping `keep_fraction`
(prune/dynamic.py); 'random' (a fresh random subset at each re-scoring); or 'infobatch'
soft pruning (prune/soft.py). The policy's seed is the run's data seed. Compute accounting
goes to each run's summary.json; reruns resume interrupted runs and skip finished ones.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence, Union

from datadiet_jax.prune.dynamic import DynamicConfig, make_dynamic_policy
from datadiet_jax.prune.soft import InfoBatchConfig, InfoBatchPolicy
from datadiet_jax.sweep import lock as run_lock
from datadiet_jax.sweep.partition import Worker
from datadiet_jax.train.loop import TrainConfig, train_run
from datadiet_jax.pipelines.dynamic_sweep import run_train_config
from datadiet_jax.pipelines.train_runs import run_dir

log = logging.getLogger("datadiet_jax")
INFOBATCH = "infobatch"


@dataclasses.dataclass(frozen=True)
class DynamicRunsConfig:
  """The policy of every run. method: a re-scoring score (el2n, loss, entropy, l1_error,
  margins, grand), 'random' or 'infobatch' (which uses only infobatch_r / infobatch_delta).
  budget 'epochs': train the run's epochs, whose length follows the subset (fewer steps =
  time saved); 'steps': keep the full run's step budget."""

  method: str = "el2n"
  keep_fraction: float = 0.5
  warmup_epochs: int = 1
  rescore_every: int = 1
  strategy: str = "hardest"
  ema_alpha: float = 1.0
  ema_std_k: float = 0.0
  offset_fraction: float = 0.1
  infobatch_r: float = 0.5
  infobatch_delta: float = 0.875
  budget: str = "epochs"
  score_batch_size: int = 128

  def __post_init__(self):
    if self.budget not in ("epochs", "steps"):
      raise ValueError(f"--dynamic_budget={self.budget!r}: use 'epochs' or 'steps'")

  def policy_config(self, num_epochs: int,
                    seed: int = 0) -> Union[DynamicConfig, InfoBatchConfig]:
    """The validated policy config of a run of `num_epochs` epochs (ValueError: one line)."""
    if self.method == INFOBATCH:
      return InfoBatchConfig(self.infobatch_r, self.infobatch_delta, max(num_epochs, 1), seed)
    config = DynamicConfig(self.method, self.keep_fraction, self.warmup_epochs,
                           self.rescore_every, self.strategy, self.ema_alpha, self.ema_std_k,
                           self.offset_fraction, seed, self.score_batch_size)
    config.check_training(num_epochs)
    return config

  def record(self, num_epochs: int) -> dict:
    """The settings every run shares (config.json's "dynamic"; each run's seed is its data
    seed, so not recorded)."""
    settings = dataclasses.asdict(self.policy_config(num_epochs))
    return {"method": self.method, "budget": self.budget,
            **{k: v for k, v in settings.items() if k != "seed"}}


def make_policy(config: DynamicRunsConfig, num_epochs: int, model, dataset, seed: int):
  """The policy object of one run (its seed: the run's data seed)."""
  policy_config = config.policy_config(num_epochs, seed)
  if config.method == INFOBATCH:
    return InfoBatchPolicy(policy_config, dataset.num_train)
  return make_dynamic_policy(policy_config, model, dataset)


def train_dynamic_runs(workdir: str, runs: Sequence[int], seeds_of, model, dataset, optimizer,
                       train: TrainConfig, config: DynamicRunsConfig, progress: bool = True,
                       stop_after_step: Optional[int] = None, mesh=None,
                       worker: Worker = Worker()) -> list:
  """Trains (or resumes) runs `runs` into <workdir>/runs/run_<r>/; returns their
  TrainResults. A run another live process holds is skipped with a log line. train:
  num_steps // (num_train // batch_size) is the number of epochs."""
  epochs = train.num_steps // (dataset.num_train // train.batch_size)
  results = []
  for run in runs:
    model_seed, data_seed = seeds_of(run)
    policy = make_policy(config, epochs, model, dataset, data_seed)
    run_train = run_train_config(train, policy, epochs, config.budget, dataset.num_train)
    desc = f"{config.method} run {run}"
    try:
      result = train_run(run_dir(workdir, run), model, dataset, optimizer, run_train,
                         model_seed, data_seed, progress=progress,
                         stop_after_step=stop_after_step, desc=desc, mesh=mesh, policy=policy,
                         num_epochs=epochs if config.budget == "epochs" else None,
                         lock_label=worker.label)
    except run_lock.RunLockedError as error:
      log.info("%s: skipped, %s is training it", desc, run_lock.describe(error.holder))
      continue
    log.info("run %d: step %d, test accuracy %.4f (%s)", run, result.final_step,
             result.test_accuracy, result.run_dir)
    results.append(result)
  return results
