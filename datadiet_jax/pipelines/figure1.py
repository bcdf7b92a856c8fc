"""The paper's Figure 1 as one resumable pipeline.

  score runs -> scores -> for each method and pruned fraction, M seeds trained on the
  kept subset -> results table (CSV + markdown) and plots (PNG)

Layout under --workdir:
  score_runs/runs/run_<r>/     the N runs that produce the model-based scores
  scores/<score>/step_<k>.npy  scores (+ .json provenance sidecar)
  subsets/<method>/prune_<pct>/seed_<m>/   kept_ids.npy + a training run (rs2: no
                               kept_ids.npy; policy/step_<k>.npz, its rounds' state)
  full/seed_<m>/               the full-data reference runs
  results/results.csv, results.md, accuracy_vs_pruned.png, score_correlations.png/.csv
  label_noise.npz, results/noisy_detection.csv   (with --label_noise_fraction > 0)
  features/step_<k>.npy        penultimate features of the score runs' final checkpoint
                               (+ .json sidecar), for the moderate and d2 methods

Every stage skips what is finished (complete score files, finished runs) and resumes
what was interrupted (a run continues from its latest checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Sequence

import numpy as np

from datadiet_jax import artifacts, sweep_stats
from datadiet_jax.prune.d2 import (DEFAULT_GAMMA_FORWARD, DEFAULT_GAMMA_REVERSE,
                                   DEFAULT_NEIGHBORS, keep_d2, validate_d2_options)
from datadiet_jax.prune.dynamic import RS2, DynamicConfig, make_dynamic_policy
from datadiet_jax.prune.moderate import keep_moderate
from datadiet_jax.prune import (corrupt_labels_with_record,
                                load_label_noise_record, noisy_detection_precision,
                                original_random_seed, resolve_size, save_label_noise_record,
                                select)
from datadiet_jax.scores import ScoreError, load_scores
from datadiet_jax.scores.checkpoints import load_stacked_variables
from datadiet_jax.scores.features import features_of_runs
from datadiet_jax.scores.io import canonical_score_name, find_scores, score_paths
from datadiet_jax.scores.registry import DYNAMICS_SCORES
from datadiet_jax.sweep import lock as run_lock
from datadiet_jax.sweep.partition import Worker
from datadiet_jax.sweep.runner import Task, run_all
from datadiet_jax.train.loop import TrainConfig, build_run, is_finished, run_paths, train_run
from datadiet_jax.train.outcome import Chance, chance_of, outcome_of_summary
from datadiet_jax.pipelines.score_runs import (_provenance, _up_to_date, score_grand_at_init,
                                               score_runs)
from datadiet_jax.pipelines.train_runs import train_task
from datadiet_jax.pipelines.train_runs import run_dir, train_ensemble_groups, train_runs

log = logging.getLogger("datadiet_jax")

STRATEGIES = ("hardest", "easiest", "offset", "class_balanced", "ccs", "d2")
# Methods that select by the score runs' penultimate features (see figure_features).
GEOMETRIC = ("moderate", "d2")
D2_DEFAULT_SCORE = "el2n"  # D2's difficulty score when the method is written plain `d2`
# Score keys usable in methods: model scores at --score_step, plus these special ones.
GRAND_INIT, FORGETTING = "grand_init", "forgetting"


@dataclasses.dataclass(frozen=True)
class Method:
  """`random`, or `<score>:<strategy>` (e.g. `el2n:hardest`, `grand_init:hardest`);
  `<score>:offset<P>` (e.g. `el2n:offset5`) is the offset window that skips the top P % of
  the scores (plain `offset`: --offset_fraction), so one sweep holds several windows.
  `moderate`: Moderate-DS on the score runs' features (no score); `d2` = `el2n:d2`: D2
  pruning on those features with that difficulty score (`<score>:d2` for another).
  `rs2`: no fixed subset; RS2 without replacement (Okanovic et al. 2024, prune/dynamic.py):
  every epoch the next keep-sized slice of a per-pass random permutation, training the
  same steps and lr schedule as the static subsets of that fraction (a dynamic baseline)."""

  score: str | None
  strategy: str
  offset_percent: float | None = None

  @property
  def key(self) -> str:
    if self.score is None:
      return self.strategy  # "random", "moderate" or "rs2"
    suffix = "" if self.offset_percent is None else f"{self.offset_percent:g}"
    return f"{self.score}-{self.strategy}{suffix}"

  def label(self, score_step: int) -> str:
    if self.score is None:
      return {"random": "random", "moderate": "Moderate-DS (features)",
              "rs2": "RS2 (random subset per epoch)"}[self.strategy]
    score = {GRAND_INIT: "GraNd@init", FORGETTING: "forgetting", "input_norm": "input norm",
             "aum": "AUM", "dyn_unc": "Dyn-Unc", "dual": "DUAL", "tdds": "TDDS"}.get(
        self.score, f"{self.score.upper() if self.score in ('el2n', 'grand') else self.score}"
        f"@{score_step}")
    score = score.replace("GRAND@", "GraNd@")
    strategy = {"hardest": "keep hardest", "easiest": "keep easiest",
                "offset": "offset window", "class_balanced": "class-balanced",
                "ccs": "CCS", "d2": "D2 (features)"}[self.strategy]
    if self.offset_percent is not None:
      strategy += f" (top {self.offset_percent:g} % skipped)"
    return f"{score}, {strategy}"


def parse_method(spec: str) -> Method:
  spec = spec.strip()
  if spec in ("random", "moderate", RS2):
    return Method(None, spec)
  if spec == "d2":
    return Method(D2_DEFAULT_SCORE, "d2")
  score, _, strategy = spec.partition(":")
  if strategy == "moderate":
    raise ValueError(f"method '{spec}': Moderate-DS selects by the features' distance to "
                     "their class median, not by a score: write 'moderate'")
  strategy = strategy or "hardest"
  offset_percent = None
  if strategy.startswith("offset") and strategy != "offset":
    try:
      offset_percent = float(strategy[len("offset"):])
    except ValueError:
      offset_percent = -1.0
    if not 0 <= offset_percent < 100:
      raise ValueError(f"method '{spec}': the offset window is offset<P> with P the percent "
                       "of top scores skipped, 0 <= P < 100 (e.g. el2n:offset5)")
    strategy = "offset"
  if strategy not in STRATEGIES:
    raise ValueError(f"method '{spec}': unknown strategy '{strategy}'; use one of "
                     f"{', '.join(STRATEGIES)} (e.g. el2n:hardest) or 'random'")
  if score != GRAND_INIT:
    canonical_score_name(score)  # raises a clear error for an unknown score
  return Method(score, strategy, offset_percent)


@dataclasses.dataclass(frozen=True)
class Figure1Config:
  methods: tuple[Method, ...]
  prune_fractions: tuple[float, ...]
  score_names: tuple[str, ...]     # all scores to compute (correlations), incl. grand_init
  num_score_runs: int
  score_step: int
  score_train_steps: int
  grand_init_runs: int
  num_seeds: int
  include_full: bool = True
  budget: str = "steps"            # "steps": every run trains the full run's step count
  offset_fraction: float = 0.1
  score_batch_size: int = 128
  # D2 pruning (prune/d2.py): k of the kNN graph, forward and reverse edge-weight gammas.
  d2_neighbors: int = DEFAULT_NEIGHBORS
  d2_gamma_forward: float = DEFAULT_GAMMA_FORWARD
  d2_gamma_reverse: float = DEFAULT_GAMMA_REVERSE

  def __post_init__(self):
    try:
      validate_d2_options(self.d2_neighbors, self.d2_gamma_forward, self.d2_gamma_reverse)
    except ValueError as error:
      raise ValueError(f"{error} (--d2_neighbors, --d2_gamma_forward, --d2_gamma_reverse)") \
          from None
    for f in self.prune_fractions:
      if not 0.0 < f < 1.0:
        raise ValueError(f"prune fraction {f} must lie in (0, 1): the fraction of the data "
                         "pruned (--prune_fractions, e.g. 0.3,0.5)")
    if self.budget not in ("steps", "epochs"):
      raise ValueError(f"unknown budget '{self.budget}': use 'steps' (the original's equal "
                       "step budget) or 'epochs'")
    if self.score_train_steps < self.score_step:
      raise ValueError(f"score runs train {self.score_train_steps} steps, fewer than the "
                       f"score step {self.score_step}")
    for name in self.score_names:
      if name != GRAND_INIT:
        canonical_score_name(name)  # raises a clear error for an unknown score
    missing = sorted({m.score for m in self.methods if m.score is not None}
                     - set(self.score_names))
    if missing:
      raise ValueError(f"methods use scores {missing} that are not in --figure1_scores")


def score_file(score: str, config: Figure1Config) -> tuple[str, int]:
  """(score file name, step) of the file holding method score `score`."""
  if score == GRAND_INIT:
    return GRAND_INIT, 0
  if score == FORGETTING or score in DYNAMICS_SCORES:  # over the score runs' whole training
    return canonical_score_name(score), config.score_train_steps
  if score == "input_norm":
    return "input_norm", 0
  return canonical_score_name(score), config.score_step


def check_score_files(workdir: str, config: Figure1Config, num_train: int,
                      require_all: bool = False) -> None:
  """The score files the figure reads: every one must exist (require_all: a report of the
  runs so far), and any that exists must be readable, of num_train examples and free of
  NaN; raises a ScoreError / ValueError otherwise."""
  for name in config.score_names:
    if require_all or os.path.exists(score_paths(workdir, *score_file(name, config))["mean"]):
      load_scores(workdir, *score_file(name, config), num_train)


def check_subset_sizes(config: Figure1Config, num_train: int, batch_size: int) -> None:
  """Raises ValueError if the most pruned subset holds fewer examples than one batch (its
  runs, and an RS2 round of that size, could not train a step)."""
  for fraction in config.prune_fractions:
    keep = resolve_size(num_train, prune_fraction=float(fraction))
    if keep < batch_size:
      raise ValueError(f"--prune_fractions={fraction:g} keeps {keep} of {num_train} "
                       f"examples, fewer than --batch_size={batch_size}: lower the fraction "
                       "or the batch size")


def _score_label(score: str, config: Figure1Config) -> str:
  return Method(score, "hardest").label(config.score_step).split(",")[0]


def compute_scores(workdir: str, dataset, model, optimizer, base_train: TrainConfig,
                   config: Figure1Config, seeds_of, progress: bool, mesh=None,
                   worker: Worker = Worker(), ensemble_members: int = 1,
                   ensemble_strategy: str = "auto", early_save_steps: int = 0) -> dict:
  """Trains the score runs (if any model score is needed) and computes every score.

  early_save_steps > 0: the score runs also save a checkpoint every `early_save_steps` up
  to the score step (pipelines/score_timing.py scores those earlier checkpoints).

  With K workers, every worker trains its share of the score runs, then the others' that
  no live process holds, and waits for the rest. Then every score is computed in K
  example shards: worker i scores shard i (under the lock of
  <workdir>/score_shards/<i>_of_<K>), then any shard whose worker is not running, and
  waits for the shards live processes hold; the worker that completes the last shard
  merges them into the score files (datadiet_jax/scores/shards.py). ensemble_members > 1
  (one worker): the score runs train as ensembles first (train/ensemble_loop.py).
  """
  model_scores = [s for s in config.score_names if s not in (GRAND_INIT, "input_norm")]
  folder = os.path.join(workdir, "score_runs")
  score_train = _score_train(base_train, config, early_save_steps)
  runs = range(config.num_score_runs)
  if model_scores or needs_features(config):
    if ensemble_members > 1 and worker.count == 1:
      train_runs(folder, runs, seeds_of, model, dataset, optimizer, score_train,
                 progress=progress, mesh=mesh, desc="score run",
                 ensemble_members=ensemble_members, ensemble_strategy=ensemble_strategy)
    run_all([train_task(f"score run {r}", run_dir(folder, r), score_train.num_steps, model,
                        dataset, optimizer, score_train, *seeds_of(r), progress=progress,
                        mesh=mesh, desc=f"score run {r}", lock_label=worker.label)
             for r in runs], worker)
  def score_shard(shard: Worker):  # score_runs keeps valid files, recomputes stale ones
    lock_folder = os.path.join(workdir, "score_shards", f"{shard.index}_of_{shard.count}")
    with run_lock.hold(lock_folder, worker.label):
      _score_all(workdir, dataset, model, optimizer, score_train, config, seeds_of, progress,
                 model_scores, folder, runs, shard)

  shards = [Worker(worker.count, j) for j in range(worker.count)]
  run_all([Task(f"scores (example shard {s.index} of {s.count})" if s.count > 1 else
                "scores", lambda: False, functools.partial(score_shard, s)) for s in shards],
          worker)
  return {s: load_scores(workdir, *score_file(s, config), dataset.num_train)
          for s in config.score_names}


def _score_train(base_train: TrainConfig, config: Figure1Config,
                 early_save_steps: int = 0) -> TrainConfig:
  return dataclasses.replace(base_train, num_steps=config.score_train_steps,
                             early_save_steps=early_save_steps or config.score_step,
                             early_step=config.score_step)


def needs_features(config: Figure1Config) -> bool:
  return any(m.strategy in GEOMETRIC for m in config.methods)


def features_path(workdir: str, config: Figure1Config) -> str:
  return os.path.join(workdir, "features", f"step_{config.score_train_steps}.npy")


def figure_features(workdir: str, dataset, model, optimizer, base_train: TrainConfig,
                    config: Figure1Config, seeds_of, progress: bool = False,
                    report_only: bool = False):
  """f32[N, R * D]: the penultimate features (scores/features.py) of every training example
  under each of the R score runs at their FINAL checkpoint (step score_train_steps: the
  trained model the Moderate-DS and D2 papers take features from), concatenated per
  example: row i = [z_i^(run 0), ..., z_i^(run R-1)]. None when no method needs them (or,
  report_only, while they are not computed yet).

  Why concatenated, not averaged: independently trained runs' penultimate units are not
  aligned (any permutation or rotation of them gives the same network), so a mean over runs
  of feature vectors mixes unrelated coordinates. Concatenation keeps each run's geometry:
  the Euclidean distance of two rows is sqrt(sum_r ||z_i^(r) - z_j^(r)||^2), every run's
  distances summed, and the component-wise class median is the per-run medians side by
  side; with one score run it is exactly that run's features.

  Cached in features/step_<k>.npy (+ .json sidecar naming the runs, seeds and data); a file
  of other sources is recomputed. Every worker of a multi-worker sweep computes them
  itself if the file is missing (a forward pass; written atomically) and reads the file.
  """
  if not needs_features(config):
    return None
  path = features_path(workdir, config)
  folder = os.path.join(workdir, "score_runs")
  runs = list(range(config.num_score_runs))
  seeds = [seeds_of(r) for r in runs]
  run_dirs = [run_dir(folder, r) for r in runs]
  sources = _provenance(dataset, runs, seeds, {"step": config.score_train_steps},
                        run_dirs=run_dirs, folder=workdir)
  if _up_to_date(path, sources, f"features@{config.score_train_steps}"):
    return _load_features(path, dataset.num_train)
  if report_only:
    log.info("report: the features at step %d are not computed yet", config.score_train_steps)
    return None
  score_train = _score_train(base_train, config)
  state_like, _, _, _ = build_run(model, dataset, optimizer, score_train, *seeds[0])
  stacked = load_stacked_variables([run_paths(d)["checkpoints"] for d in run_dirs],
                                   config.score_train_steps, state_like)
  per_run = features_of_runs(model, stacked, dataset.train_inputs(),
                             getattr(dataset, "mean", None), getattr(dataset, "std", None),
                             config.score_batch_size, progress)          # f32[R, N, D]
  features = np.concatenate(list(per_run), axis=1).astype(np.float32)  # f32[N, R * D]
  artifacts.write_npy(path, features)
  artifacts.write_json(path[:-len(".npy")] + ".json",
                       {**sources, "shape": list(features.shape),
                        "layout": "row i = the R score runs' penultimate features of example "
                                  "i, concatenated in run order",
                        "feature_dim_per_run": int(per_run.shape[-1])})
  log.info("features of %d score runs at step %d: %s -> %s", len(runs),
           config.score_train_steps, features.shape, path)
  return _load_features(path, dataset.num_train)


def _load_features(path: str, num_train: int) -> np.ndarray:
  features = np.load(path)
  if features.ndim != 2 or features.shape[0] != num_train:
    raise ValueError(f"{path} holds features of shape {features.shape}, not of the "
                     f"{num_train} training examples; delete it to recompute them")
  return features


def _score_all(workdir, dataset, model, optimizer, score_train, config, seeds_of, progress,
               model_scores, folder, runs, shard: Worker = Worker()) -> None:
  """Every score of the config; shard: only that example shard (merged when complete)."""
  if model_scores:
    seeds = [seeds_of(r) for r in runs]
    state_like, _, _, _ = build_run(model, dataset, optimizer, score_train, *seeds[0])
    by_step = {}
    for score in model_scores:
      _, step = score_file(score, config)
      by_step.setdefault(step, []).append(canonical_score_name(score))
    for step, names in by_step.items():
      score_runs(workdir, [run_dir(folder, r) for r in runs], seeds, dataset, model, state_like,
                 step, names, config.score_batch_size, progress, shard,
                 tensorboard=score_train.tensorboard)
  if "input_norm" in config.score_names:
    score_runs(workdir, [], [], dataset, model, None, 0, ["input_norm"], progress=progress,
               worker=shard, tensorboard=score_train.tensorboard)
  if GRAND_INIT in config.score_names:
    model_seeds = [seeds_of(r)[0] for r in range(config.grand_init_runs)]
    score_grand_at_init(workdir, dataset, model, model_seeds, config.score_batch_size, progress,
                        shard, tensorboard=score_train.tensorboard)


def kept_ids(method: Method, scores: dict, labels, keep: int, seed: int,
             offset: int, features=None, config: Figure1Config | None = None) -> np.ndarray:
  """i32[keep] sorted kept ids of `method`. features: f32[N, F] (figure_features), needed by
  moderate and d2; config: D2's k and gammas (defaults of Figure1Config without one)."""
  if method.strategy in GEOMETRIC and features is None:
    raise ValueError(f"method {method.key} selects by features; pass features=...")
  if method.strategy == "moderate":
    return keep_moderate(features, labels, keep)
  if method.score is None:
    return select("random", None, labels, keep, seed)
  values = scores[method.score]
  if method.strategy == "d2":
    if not np.all(np.isfinite(values)):
      raise ValueError(f"method {method.key}: D2 needs finite difficulty scores, and "
                       f"{method.score} has non-finite ones (forgetting's +inf: never "
                       "learned); use el2n:d2 or another finite score")
    d2 = (config.d2_neighbors, config.d2_gamma_forward, config.d2_gamma_reverse) if config \
        else (DEFAULT_NEIGHBORS, DEFAULT_GAMMA_FORWARD, DEFAULT_GAMMA_REVERSE)
    return keep_d2(features, values, keep, *d2)
  if method.strategy == "hardest":
    return select("keep_hardest", values, labels, keep)
  if method.strategy == "easiest":
    return select("keep_easiest", values, labels, keep)
  if method.strategy == "offset":
    if method.offset_percent is not None:
      offset = int(round(method.offset_percent / 100 * len(values)))
    # A window that would run past the easiest example (skip round(P % of N), keep N -
    # floor(prune N): 448 + 4031 > 4478 on ATIS at P = 10, 10 % pruned) ends there instead:
    # it skips the N - keep hardest, as the dynamic policy's offset does.
    offset = min(offset, len(values) - keep)
    return select("offset", values, labels, keep, offset=offset)
  if method.strategy == "class_balanced":
    return select("class_balanced", values, labels, keep, seed, strategy="hardest")
  return select("ccs", values, labels, keep, seed)


def run_figure1(workdir: str, dataset, model, optimizer, base_train: TrainConfig,
                config: Figure1Config, seeds_of, progress: bool = True, mesh=None,
                label_noise_fraction: float = 0.0, label_noise_seed: int = 0,
                report_only: bool = False, worker: Worker = Worker(),
                ensemble_members: int = 1, ensemble_strategy: str = "auto") -> dict:
  """Runs (or resumes) the whole pipeline; returns {'rows', 'trainings_run', 'paths',
  'missing'}.

  report_only: train nothing; write the results of the runs finished so far (while a long
  sweep is still running elsewhere) and list the missing ones in results.md.
  worker: worker i of K trains the runs at positions p % K == i of the sweep order (full and
  subset runs; the score stage is shared, see compute_scores), then reports every run
  finished so far, by any worker, and lists the missing ones.
  ensemble_members > 1 (one worker): the score runs and then the sweep's own runs train as
  ensembles of up to that many members (`_train_seed_ensembles`: the full-data seeds
  together, each prune fraction's seeds of every method together); the per-run pass then
  finds them finished and reports them in the usual order. With K > 1 workers the runs keep
  the per-run split above and train one at a time (groups would cut across the workers'
  shares).
  """
  noise = None
  if label_noise_fraction > 0:
    dataset, noise = _apply_label_noise(workdir, dataset, label_noise_fraction,
                                        label_noise_seed)
  needed = {m.score for m in config.methods if m.score is not None}
  missing = sorted(needed - set(config.score_names))
  if missing:
    raise ValueError(f"methods use scores {missing} that are not in --figure1_scores")
  if report_only:
    scores = _computed_scores(workdir, config, dataset.num_train)
  else:
    scores = compute_scores(workdir, dataset, model, optimizer, base_train, config, seeds_of,
                            progress, mesh, worker, ensemble_members, ensemble_strategy)
  features = figure_features(workdir, dataset, model, optimizer, base_train, config, seeds_of,
                             progress, report_only)
  chance = chance_of(dataset)  # the outcome rule's chance level (loss and accuracy)
  plan = _plan_runs(workdir, dataset, base_train, config, scores, report_only, features)
  trainings_run = 0
  if ensemble_members > 1 and worker.count == 1 and not report_only:
    trainings_run += _train_seed_ensembles(plan, model, dataset, optimizer, seeds_of, progress,
                                           mesh, ensemble_members, ensemble_strategy,
                                           worker.label)
  # Training pass: this worker's share of the runs (by sweep position); a run another live
  # process holds is skipped with a log line.
  trained = {}  # plan index -> the result of a run this call trained (or read)
  trainable = [i for i, run in enumerate(plan) if run.folder is not None]
  for position, index in enumerate(trainable):
    run = plan[index]
    if report_only or not worker.owns(position):
      continue
    try:
      trained[index] = train_run(run.folder, model, dataset, optimizer, run.train,
                                 *seeds_of(run.row["seed"]), example_ids=run.example_ids,
                                 progress=progress, mesh=mesh, desc=run.desc,
                                 policy=run.policy, lock_label=worker.label)
    except run_lock.RunLockedError as error:
      log.info("%s: skipped, %s is training it", run.desc, run_lock.describe(error.holder))
  # Report pass, after the training: every run finished by now, by any worker or process
  # (a run skipped above because another process held it may have finished since).
  rows, missing = [], []
  for index, run in enumerate(plan):
    result = trained.get(index)
    if result is None and run.folder is not None and is_finished(run.folder,
                                                                 run.train.num_steps):
      result = train_run(run.folder, model, dataset, optimizer, run.train,
                         *seeds_of(run.row["seed"]), example_ids=run.example_ids,
                         progress=False, desc=run.desc, policy=run.policy)  # its summary
    if result is None:
      missing.append(run.desc)
      continue
    trainings_run += result.steps_trained > 0
    rows.append({**run.row, "test_accuracy": result.test_accuracy,
                 "test_loss": result.test_loss,
                 **_summary_fields(result, chance)})
  paths = write_results(workdir, rows, scores, config, dataset, noise, missing)
  log.info("figure 1: %d trainings run in this call; %s table %s, plot %s", trainings_run,
           sweep_stats.outcome_summary_line(_run_outcomes(rows)), paths["markdown"],
           paths["plot"])
  if missing and not report_only:
    log.info("figure 1%s: %d runs not finished yet (other workers or processes): %s; rerun "
             "with --figure1_report_only once they are", f" ({worker.label})" * bool(
                 worker.label), len(missing), "; ".join(missing))
  return {"rows": rows, "trainings_run": trainings_run, "paths": paths, "missing": missing}


@dataclasses.dataclass(frozen=True)
class _PlannedRun:
  """One training of the sweep: where it writes, how it trains, on which examples, and the
  fields of its results row (method, key, prune_fraction, seed, num_kept, num_steps).
  folder None: a run that cannot be planned yet (report only, its scores are missing)."""
  folder: str | None
  train: TrainConfig | None
  example_ids: np.ndarray | None   # i32[K] kept ids; None: all examples (or the policy's)
  desc: str
  row: dict
  policy: object = None            # rs2: the subset policy choosing each epoch's examples


def _plan_runs(workdir, dataset, base_train: TrainConfig, config: Figure1Config, scores: dict,
               report_only: bool, features=None) -> list[_PlannedRun]:
  """Every training of the sweep in the sweep order (seed by seed: the full-data run, then
  each fraction's methods), which is also the order of the results rows and of the
  multi-worker split; writes (or checks) each subset's kept_ids.npy. The retraining runs
  do not accumulate training dynamics (--track_dynamics is for the score runs)."""
  n = dataset.num_train
  offset = int(round(config.offset_fraction * n))
  base_train = dataclasses.replace(base_train, track_dynamics=())
  plan = []
  for m in range(config.num_seeds):
    if config.include_full:
      plan.append(_PlannedRun(
          os.path.join(workdir, "full", f"seed_{m}"), base_train, None, f"full data, seed {m}",
          {"method": "full data", "key": "full", "prune_fraction": 0.0, "seed": m,
           "num_kept": n, "num_steps": base_train.num_steps}))
    for fraction in config.prune_fractions:
      keep = resolve_size(n, prune_fraction=float(fraction))
      for method in config.methods:
        folder = os.path.join(workdir, "subsets", method.key, f"prune_{round(fraction * 100)}",
                              f"seed_{m}")
        desc = f"{method.key} prune {fraction:.0%} seed {m}"
        if report_only and method.score is not None and method.score not in scores:
          plan.append(_PlannedRun(None, None, None,
                                  f"{desc} (its scores are not computed yet)", {}))
          continue
        if report_only and method.strategy in GEOMETRIC and features is None:
          plan.append(_PlannedRun(None, None, None,
                                  f"{desc} (its features are not computed yet)", {}))
          continue
        policy = ids = None
        if method.strategy == RS2:  # the same seed as the random subsets of seed m
          policy = make_dynamic_policy(DynamicConfig(
              score=RS2, keep_fraction=keep / n, warmup_epochs=0, rescore_every=1,
              seed=original_random_seed(m)), None, dataset)
        else:
          ids = kept_ids(method, scores, dataset.train_labels, keep,
                         original_random_seed(m), offset, features, config)
          _write_or_check_ids(os.path.join(folder, "kept_ids.npy"), ids)
        # Step budget: the full run's step count, and its lr decays at the same steps.
        train = dataclasses.replace(base_train,
                                    schedule_steps_per_epoch=n // base_train.batch_size)
        if config.budget == "epochs":
          per_epoch = keep // base_train.batch_size
          full_epochs = base_train.num_steps / (n // base_train.batch_size)
          train = dataclasses.replace(base_train, num_steps=int(round(full_epochs * per_epoch)))
        plan.append(_PlannedRun(folder, train, ids, desc,
                                {"method": method.label(config.score_step), "key": method.key,
                                 "prune_fraction": fraction, "seed": m, "num_kept": keep,
                                 "num_steps": train.num_steps}, policy))
  return plan


def _train_seed_ensembles(plan, model, dataset, optimizer, seeds_of, progress, mesh,
                          members: int, strategy: str, lock_label: str) -> int:
  """Trains the sweep's runs as ensembles (train/ensemble_loop.py) before the per-run pass,
  which then finds them finished; returns how many trained.

  Runs that train alike (one TrainConfig: step budget, lr schedule) on subsets of one size
  share ensemble groups of up to `members`: the full-data seeds form one pool, and each
  prune fraction's seeds of every method another (a member keeps its own kept ids, e.g. its
  own random subset, and draws its own batches from them). Every member has the seeds, the
  folder, checkpoints and summary.json its lone run has, so the report, resume and the
  score CLI read it unchanged."""
  pools = {}
  for run in plan:
    if run.folder is not None and run.policy is None:  # a policy's run trains alone
      pools.setdefault((run.train, run.row["num_kept"]), []).append(run)
  trained = 0
  for (train, _), runs in pools.items():
    if sum(not is_finished(r.folder, train.num_steps) for r in runs) < 2:
      continue  # nothing to group: the per-run pass trains it alone
    results = train_ensemble_groups(
        [r.folder for r in runs], [seeds_of(r.row["seed"]) for r in runs],
        [r.desc for r in runs], model, dataset, optimizer, train,
        example_ids=[r.example_ids for r in runs], progress=progress, mesh=mesh,
        members=members, strategy=strategy, lock_label=lock_label)
    trained += sum(r.steps_trained > 0 for r in results)
  return trained


def _computed_scores(workdir: str, config: Figure1Config, num_train: int) -> dict:
  """The scores computed so far (report-only mode while the sweep is still scoring);
  a score file that exists but is unreadable is still an error."""
  scores = {}
  for score in config.score_names:
    name, step = score_file(score, config)
    try:
      find_scores(workdir, name, step)
    except ScoreError:
      log.info("report: %s at step %d is not computed yet", name, step)
      continue
    scores[score] = load_scores(workdir, name, step, num_train)
  return scores


def _write_or_check_ids(path: str, ids: np.ndarray) -> None:
  if os.path.exists(path):
    previous = np.load(path)
    if not np.array_equal(previous, ids):
      raise ValueError(f"{path} holds another subset than these flags select; the scores or "
                       "flags changed since it was made: use a new --workdir")
  else:
    artifacts.write_npy(path, ids.astype(np.int32))


def _apply_label_noise(workdir, dataset, fraction, seed):
  noisy, record = corrupt_labels_with_record(dataset.train_labels, fraction, seed,
                                             dataset.num_classes)
  path = os.path.join(workdir, "label_noise.npz")
  if os.path.exists(path):
    previous = load_label_noise_record(path)
    if not np.array_equal(previous.changed_ids, record.changed_ids):
      raise ValueError(f"{path} records other label noise than these flags make; use a new "
                       "--workdir")
  else:
    save_label_noise_record(path, record)
  log.info("label noise: %d of %d labels changed (fraction %.2f, seed %d), record %s",
           len(record.changed_ids), dataset.num_train, fraction, seed, path)
  return dataset.replace(train_labels=noisy.astype(np.int32),
                         example_order=dataset.example_order), record


def _summary_fields(result, chance: Chance) -> dict:
  """A row's fields read from the run's summary.json: its outcome
  (datadiet_jax/train/outcome.py; summaries written before outcomes existed are classified
  from their final test loss) and the task's extra test metrics beyond accuracy and loss
  (test_slot_f1 for joint intent + slot data; none for images)."""
  path = run_paths(result.run_dir)["summary"]
  if not os.path.exists(path):
    return {"outcome": result.outcome}
  summary = artifacts.read_json(path)
  return {"outcome": outcome_of_summary(summary, chance),
          **{k: summary[k] for k in sweep_stats.task_metrics([summary])}}


def _run_outcomes(rows: Sequence[dict]) -> list:
  return [sweep_stats.RunOutcome(r["method"], r["prune_fraction"], r["seed"], r["outcome"],
                                 r["test_accuracy"]) for r in rows]


def offset_pairs(rows: Sequence[dict], methods: Sequence[Method]) -> list:
  """Each offset window (`<score>:offset<k>`: skip the top k % of the scores, keep the next
  ones) paired by seed against its own score's keep-hardest at the same fraction: does
  dropping the very highest scores help ("BERT on a Data Diet")? One
  sweep_stats.PairedStats per (offset method, fraction) where both ran; [] without offsets."""
  label_of = {r["key"]: r["method"] for r in rows}
  pairs = []
  for method in methods:
    hardest = Method(method.score, "hardest").key
    if method.strategy != "offset" or not {method.key, hardest} <= label_of.keys():
      continue
    runs = _run_outcomes([r for r in rows if r["key"] in (method.key, hardest)])
    pairs += [p for p in sweep_stats.paired_comparisons(runs, baseline=label_of[hardest])
              if p.method == label_of[method.key]]
  return pairs


def summarize(rows: Sequence[dict]) -> list[dict]:
  """Per (method, prune fraction): outcome counts and, over the ok runs only, the mean, std
  and 95 % t-interval of the test accuracy (datadiet_jax.sweep_stats), and the mean of the
  task's extra test metrics (`test_slot_f1_mean` for joint intent + slot data)."""
  key_of = {r["method"]: r["key"] for r in rows}
  cells = sweep_stats.cell_stats(_run_outcomes(rows))
  extra = sweep_stats.task_metrics(rows)

  def extra_means(cell) -> dict:  # the task's extra metrics, mean over the ok runs
    ok = [r for r in rows if (r["method"], float(r["prune_fraction"])) ==
          (cell.method, cell.fraction) and r["outcome"] == "ok"]
    return {f"{k}_mean": float(np.mean([r[k] for r in ok])) if ok else float("nan")
            for k in extra}

  return [{"method": c.method, "key": key_of[c.method], "num_seeds": c.num_runs, **row,
           **extra_means(c)} for c, row in zip(cells, sweep_stats.cells_as_rows(cells))]


def write_results(workdir: str, rows, scores: dict, config: Figure1Config, dataset,
                  noise=None, missing=()) -> dict:
  results = os.path.join(workdir, "results")
  paths = {"runs_csv": os.path.join(results, "runs.csv"),
           "csv": os.path.join(results, "results.csv"),
           "markdown": os.path.join(results, "results.md"),
           "plot": os.path.join(results, "accuracy_vs_pruned.png"),
           "correlations_csv": os.path.join(results, "score_correlations.csv"),
           "correlations_plot": os.path.join(results, "score_correlations.png")}
  paths["paired_csv"] = os.path.join(results, "paired_vs_random.csv")
  runs = _run_outcomes(rows)
  cells = sweep_stats.cell_stats(runs)
  pairs = sweep_stats.paired_comparisons(runs, baseline="random")
  artifacts.write_csv(paths["runs_csv"], rows)
  table = summarize(rows)
  artifacts.write_csv(paths["csv"], table)
  artifacts.write_csv(paths["paired_csv"], sweep_stats.pairs_as_rows(pairs))
  markdown = markdown_table(cells, pairs, runs, dataset, config)
  offsets = offset_pairs(rows, config.methods)
  if offsets:
    paths["offset_csv"] = os.path.join(results, "paired_offset_vs_hardest.csv")
    artifacts.write_csv(paths["offset_csv"], sweep_stats.pairs_as_rows(offsets))
    markdown += ("\n\nOffset windows paired by seed against the same score's keep-hardest at "
                 "the same fraction: offset − keep hardest in accuracy points, 95 % t-interval, "
                 "two-sided paired t-test:\n\n" + sweep_stats.markdown_paired_table(offsets))
  markdown += task_metrics_table(table)
  if missing:
    markdown += ("\n\nNot finished yet (a partial report; rerun with --figure1_report_only "
                 "when they are): "
                 + "; ".join(missing) + ".")
  if scores:
    names, matrix = spearman_matrix(scores)
    labels = [_score_label(s, config) for s in names]
    artifacts.write_csv(paths["correlations_csv"],
                        [{"score": labels[i], **{labels[j]: round(float(matrix[i, j]), 4)
                                                 for j in range(len(names))}}
                         for i in range(len(names))])
    markdown += "\n\nSpearman rank correlations of the scores over the training examples:\n\n"
    markdown += "| | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n"
    for i, label in enumerate(labels):
      markdown += f"| {label} | " + " | ".join(f"{matrix[i, j]:.3f}" for j in range(len(names)))
      markdown += " |\n"
    plot_correlations(paths["correlations_plot"], labels, matrix)
  if noise is not None:
    paths["noisy_csv"] = os.path.join(results, "noisy_detection.csv")
    k = len(noise.changed_ids)
    detection = [{"score": _score_label(s, config), "k": k,
                  "precision_at_k": float(noisy_detection_precision(v, noise.changed_ids, k))}
                 for s, v in scores.items() if k]
    artifacts.write_csv(paths["noisy_csv"], detection)
    markdown += (f"\nLabel noise: {k} labels changed. Precision of the top-{k} examples by score "
                 "at finding them:\n\n| score | precision@k |\n|---|---|\n")
    markdown += "".join(f"| {d['score']} | {d['precision_at_k']:.3f} |\n" for d in detection)
  artifacts.write_text(paths["markdown"], markdown)
  sweep_stats.plot_accuracy_vs_fraction(
      paths["plot"], runs, f"{dataset.name} ({dataset.num_train} train examples), "
      f"{config.budget} budget: accuracy vs data pruned")
  return paths


def markdown_table(cells, pairs, runs, dataset, config: Figure1Config) -> str:
  title = (f"Test accuracy (%) on {dataset.name} ({dataset.num_train} train examples), "
           f"{config.budget} budget: mean ± std [95 % t-interval of the mean] over the seeds "
           "whose run ended ok (n); diverged/failed runs are counted, not averaged in. "
           f"{sweep_stats.outcome_summary_line(runs)}\n\n")
  text = title + sweep_stats.markdown_accuracy_table(cells)
  if pairs:
    text += ("\n\nPaired by seed against random at the same fraction (same model and data "
             "seeds): method − random in accuracy points, 95 % t-interval, two-sided paired "
             "t-test:\n\n" + sweep_stats.markdown_paired_table(pairs))
  return text


def task_metrics_table(table: Sequence[dict]) -> str:
  """A markdown table of the task's extra test metrics per cell of `summarize` (slot F1 for
  joint data); "" when the task has none (images, sentence classification)."""
  extra = sweep_stats.task_metric_columns(table)
  if not extra:
    return ""
  names = [k[len("test_"):].replace("_", " ") for k in extra]
  lines = ["\n\nThe task's other test metrics, mean over the seeds whose run ended ok:\n",
           "| method | pruned | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(extra)]
  for r in table:
    lines.append(f"| {r['method']} | {float(r['prune_fraction']):.0%} | "
                 + " | ".join(f"{r[k + '_mean']:.3f}" for k in extra) + " |")
  return "\n".join(lines)


def spearman_matrix(scores: dict) -> tuple[list[str], np.ndarray]:
  from scipy.stats import rankdata
  names = list(scores)
  ranks = np.stack([rankdata(np.asarray(scores[s], np.float64)) for s in names])
  return names, np.corrcoef(ranks) if len(names) > 1 else np.ones((1, 1))


def plot_correlations(path: str, labels, matrix) -> None:
  from matplotlib.figure import Figure
  fig = Figure(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 1.8))
  ax = fig.subplots()
  image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
  ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
  ax.set_yticks(range(len(labels)), labels, fontsize=8)
  for i in range(len(labels)):
    for j in range(len(labels)):
      ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
              color="white" if abs(matrix[i, j]) > 0.6 else "black")
  fig.colorbar(image, ax=ax, label="Spearman rank correlation")
  ax.set_title("score rank correlations")
  fig.tight_layout()
  with artifacts.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=120)
