"""Dynamic data pruning sweep: test accuracy vs the fraction of training compute used.

For every method and keep fraction (or InfoBatch ratio r), `num_seeds` runs, each a
`train_run` with a subset policy, then a table (CSV + markdown) and a plot:

  full             all data every epoch (the reference: compute fraction 1)
  static_el2n      EL2N scored once, at the end of the warm-up, subset kept fixed after
  dynamic_el2n     EL2N re-scored every `rescore_every` epochs ("NLU on Data Diets")
  dynamic_loss     the same with the eval-mode loss
  dynamic_entropy  the same with the predictive entropy (not in the default list)
  dynamic_random   a fresh uniform subset of the same size at each re-scoring (control;
                   RS2 with replacement across rounds)
  rs2              RS2 without replacement (Okanovic et al. 2024, Algorithm 1): every
                   epoch the next floor(N f) ids of a per-pass random permutation, from
                   epoch 0 (the paper's schedule: no warm-up; one round per epoch), so at
                   the same keep fraction f its compute fraction is f (up to the batches'
                   remainder), below dynamic random's (1 warm-up epoch on all data)
  infobatch        InfoBatch soft pruning, ratio r, loss rescaling, annealing (1 - delta)

Compute fraction of a run = (examples forwarded + back-propagated in training
+ FORWARD_COST x examples forwarded to score) / (examples trained by a full-data run of
the same number of epochs); a forward pass costs ~1/3 of a forward + backward step. The
measured wall-time fraction (train + data + score seconds over the full runs' mean, each
phase timed directly by the loop: train/loop.py) is reported beside it, and the run wall
fraction (each whole run's wall seconds, setup, evaluation and checkpoints included, over
the same seed's full-data run); on shared CPUs they are noisier. runs.csv also lists each
run's eval, checkpoint, wall and unaccounted seconds.

Layout under the workdir:
  dynamic/<method>/<keep_50 | r_30 | all>/seed_<m>/   one train_run each (resumable)
  dynamic/results/runs.csv, results.csv, paired.csv, results.md, accuracy_vs_compute.png

The table gives each cell's mean ± std and 95 % t-interval over its ok seeds; paired.csv
(and results.md) compare every pruned cell with full data and every keep-fraction cell
with dynamic random at the same keep fraction, paired by seed index (the same model and
data seeds): mean difference, its 95 % t-interval and the paired t-test p (sweep_stats).

Every run resumes from its checkpoints and finished runs are skipped, so rerunning the
same command continues an interrupted sweep; `report_only` writes the table from the
runs finished so far. Runs whose summary.json records an outcome other than "ok"
(diverged, failed) are listed as such and never averaged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

import numpy as np

from datadiet_jax import artifacts
from datadiet_jax.sweep_stats import (PairedStats, RunOutcome, markdown_paired_table,
                                      paired_comparisons, pairs_as_rows, t_interval,
                                      task_metric_columns, task_metrics)
from datadiet_jax.prune.dynamic import RS2, DynamicConfig, make_dynamic_policy
from datadiet_jax.prune.soft import InfoBatchConfig, InfoBatchPolicy
from datadiet_jax.sweep import lock as run_lock
from datadiet_jax.sweep.partition import Worker
from datadiet_jax.train import outcome as outcomes
from datadiet_jax.train.loop import TrainConfig, is_finished, run_paths, train_run
from datadiet_jax.train.subset import FixedSubset

log = logging.getLogger("datadiet_jax")

FORWARD_COST = 1.0 / 3.0
METHODS = ("full", "static_el2n", "dynamic_el2n", "dynamic_loss", "dynamic_entropy",
           "dynamic_random", "rs2", "infobatch")
DEFAULT_METHODS = ("full", "static_el2n", "dynamic_el2n", "dynamic_loss", "dynamic_random",
                   "infobatch")
LABELS = {"full": "full data", "static_el2n": "static EL2N (scored once)",
          "dynamic_el2n": "dynamic EL2N", "dynamic_loss": "dynamic loss",
          "dynamic_entropy": "dynamic entropy", "dynamic_random": "dynamic random",
          "rs2": "RS2 (no replacement)", "infobatch": "InfoBatch"}


@dataclasses.dataclass(frozen=True)
class DynamicSweepConfig:
  """What the sweep runs; `num_epochs` epochs per run (the epochs budget) or the full
  run's step count (budget="steps": pruned epochs are shorter, so more of them)."""

  num_epochs: int
  methods: tuple[str, ...] = DEFAULT_METHODS
  keep_fractions: tuple[float, ...] = (0.3, 0.5, 0.7)
  infobatch_ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
  num_seeds: int = 2
  warmup_epochs: int = 1
  rescore_every: int = 1
  strategy: str = "hardest"
  ema_alpha: float = 1.0
  ema_std_k: float = 0.0
  infobatch_delta: float = 0.875
  budget: str = "epochs"
  score_batch_size: int = 128

  def __post_init__(self):
    unknown = sorted(set(self.methods) - set(METHODS))
    if unknown or not self.methods:
      raise ValueError(f"--dynamic_sweep_methods: unknown {unknown or 'empty list'}; use "
                       f"{', '.join(METHODS)}")
    if self.budget not in ("epochs", "steps"):
      raise ValueError(f"--dynamic_budget={self.budget!r}: use 'epochs' (fewer steps when "
                       "the subset shrinks: the time saved) or 'steps' (fixed step budget)")
    if self.num_seeds < 1:
      raise ValueError(f"need at least one seed, got {self.num_seeds}")
    if self.num_epochs < 1:
      raise ValueError(f"need at least one epoch, got {self.num_epochs}")
    for f in self.keep_fractions:  # fail on bad input before anything is trained
      self.dynamic_config("el2n", f, 0)
    for r in self.infobatch_ratios:
      InfoBatchConfig(float(r), self.infobatch_delta, self.num_epochs)

  def dynamic_config(self, score: str, keep_fraction: float, seed: int,
                     once: bool = False) -> DynamicConfig:
    """The policy of a re-scoring cell; RS2 ("rs2") follows the paper's schedule, a new
    round every epoch from epoch 0, whatever warmup_epochs / rescore_every say."""
    rs2 = score == RS2
    config = DynamicConfig(score=score, keep_fraction=float(keep_fraction),
                           warmup_epochs=0 if rs2 else self.warmup_epochs,
                           rescore_every=(1 if rs2 else self.num_epochs if once
                                          else self.rescore_every),
                           strategy=self.strategy, ema_alpha=self.ema_alpha,
                           ema_std_k=self.ema_std_k, seed=seed,
                           score_batch_size=self.score_batch_size)
    config.check_training(self.num_epochs)
    return config


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of the plot: a method at one keep fraction / ratio (param None: full)."""

  method: str
  param: Optional[float]

  @property
  def folder(self) -> str:
    if self.param is None:
      return os.path.join(self.method, "all")
    prefix = "r" if self.method == "infobatch" else "keep"
    return os.path.join(self.method, f"{prefix}_{round(self.param * 100)}")

  @property
  def setting(self) -> str:
    if self.param is None:
      return "all data"
    return f"r = {self.param:g}" if self.method == "infobatch" else f"keep {self.param:.0%}"


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One training of the sweep: a cell at one seed index, at `position` in the sweep order
  (which splits the runs over workers), with its policy and TrainConfig."""

  position: int
  seed_index: int
  cell: Cell
  folder: str
  model_seed: int
  data_seed: int
  policy: object
  train: TrainConfig

  @property
  def desc(self) -> str:
    """How the log and the missing-runs list name it, e.g. 'dynamic_el2n keep 50% seed 1'."""
    return f"{self.cell.method} {self.cell.setting} seed {self.seed_index}"


def cells(config: DynamicSweepConfig) -> list[Cell]:
  """Every (method, keep fraction or r), in the order they train: full data, then the
  fractions nearest 1/2 first across all methods, so a partial sweep (stopped early, or
  tabulated with report_only) compares every method at 50 % before the other fractions."""
  def params(method):
    values = config.infobatch_ratios if method == "infobatch" else config.keep_fractions
    return sorted((float(v) for v in values), key=lambda v: abs(v - 0.5))

  out = [Cell(m, None) for m in config.methods if m == "full"]
  pruned = [m for m in config.methods if m != "full"]
  for rank in range(max((len(params(m)) for m in pruned), default=0)):
    out.extend(Cell(m, params(m)[rank]) for m in pruned if rank < len(params(m)))
  return out


def make_policy(cell: Cell, config: DynamicSweepConfig, model, dataset, seed: int):
  if cell.method == "full":
    return FixedSubset(np.arange(dataset.num_train, dtype=np.int32))
  if cell.method == "infobatch":
    return InfoBatchPolicy(InfoBatchConfig(cell.param, config.infobatch_delta,
                                           config.num_epochs, seed), dataset.num_train)
  if cell.method == RS2:
    return make_dynamic_policy(config.dynamic_config(RS2, cell.param, seed), model, dataset)
  kind, score = cell.method.split("_", 1)
  dynamic = config.dynamic_config(score, cell.param, seed, once=kind == "static")
  return make_dynamic_policy(dynamic, model, dataset)


def run_train_config(base: TrainConfig, policy, num_epochs: int, budget: str,
                     num_train: int) -> TrainConfig:
  """The run's TrainConfig: the lr schedule counts epochs of the policy's expected length
  (budget "epochs"), or of the full data (budget "steps"), so every run decays its lr at
  the same fraction of its training."""
  full = num_train // base.batch_size
  if budget == "steps":
    return dataclasses.replace(base, schedule_steps_per_epoch=full)
  sizes = policy.expected_epoch_sizes(num_epochs)
  expected = sum(s // base.batch_size for s in sizes)
  return dataclasses.replace(base, schedule_steps_per_epoch=max(
      1, int(round(expected / num_epochs))))


def run_dynamic_sweep(workdir: str, dataset, model, optimizer, base_train: TrainConfig,
                      config: DynamicSweepConfig, seeds_of, progress: bool = True,
                      report_only: bool = False, stop_after_step: Optional[int] = None,
                      mesh=None, worker: Worker = Worker()) -> dict:
  """Runs (or resumes) every cell x seed, then writes the results; returns
  {'rows', 'table', 'missing', 'paths'}.

  worker: worker i of K trains the runs at positions p % K == i of the sweep order (seed
  major, then cell); a run another live process holds is skipped with a log line. Every
  worker then reports all runs finished so far, by any worker, and lists the missing ones.
  """
  root = os.path.join(workdir, "dynamic")
  runs = []
  for m in range(config.num_seeds):
    model_seed, data_seed = seeds_of(m)
    for cell in cells(config):
      policy = make_policy(cell, config, model, dataset, data_seed)
      runs.append(SweepRun(
          position=len(runs), seed_index=m, cell=cell,
          folder=os.path.join(root, cell.folder, f"seed_{m}"), model_seed=model_seed,
          data_seed=data_seed, policy=policy,
          train=run_train_config(base_train, policy, config.num_epochs, config.budget,
                                 dataset.num_train)))
  for run in runs:
    if (report_only or not worker.owns(run.position)
        or is_finished(run.folder, run.train.num_steps)):
      continue
    try:
      train_run(run.folder, model, dataset, optimizer, run.train, run.model_seed,
                run.data_seed, progress=progress, desc=run.desc, mesh=mesh,
                stop_after_step=stop_after_step,
                policy=None if run.cell.method == "full" else run.policy,
                num_epochs=config.num_epochs if config.budget == "epochs" else None,
                lock_label=worker.label)
    except run_lock.RunLockedError as error:
      log.info("%s: skipped, %s is training it", run.desc, run_lock.describe(error.holder))
  # The report, after this worker's share: every run finished by now, by any worker.
  rows, missing, chance = [], [], outcomes.chance_of(dataset)
  for run in runs:
    if is_finished(run.folder, run.train.num_steps):
      rows.append(run_row(run.folder, run.cell, run.seed_index, chance))
    else:
      missing.append(run.desc)
  paths = write_results(root, rows, missing, dataset, config)
  if missing and not report_only:
    log.info("dynamic sweep%s: %d runs not finished yet (other workers or processes): %s; "
             "rerun with --dynamic_report_only once they are",
             f" ({worker.label})" * bool(worker.label), len(missing), "; ".join(missing))
  return {"rows": rows, "table": summarize(rows), "missing": missing, "paths": paths}


def run_row(folder: str, cell: Cell, seed: int, chance: outcomes.Chance) -> dict:
  """The table row of a finished run (its outcome by train/outcome.py's rule)."""
  summary = artifacts.read_json(run_paths(folder)["summary"])
  account = summary.get("accounting", {})
  return {"method": cell.method, "label": LABELS[cell.method], "setting": cell.setting,
          "param": "" if cell.param is None else cell.param, "seed": seed,
          "outcome": outcomes.outcome_of_summary(summary, chance),
          "test_accuracy": summary.get("test_accuracy"), "test_loss": summary.get("test_loss"),
          "optimizer_steps": account.get("optimizer_steps", summary.get("final_step")),
          "train_examples": account.get("train_examples"),
          "scored_examples": account.get("scored_examples", 0),
          "train_seconds": account.get("train_seconds"),
          "data_seconds": account.get("data_seconds", 0.0),
          "score_seconds": account.get("score_seconds", 0.0),
          "eval_seconds": account.get("eval_seconds", 0.0),
          "checkpoint_seconds": account.get("checkpoint_seconds", 0.0),
          "wall_seconds": account.get("wall_seconds"),
          "unaccounted_seconds": account.get("unaccounted_seconds"),
          **{k: summary[k] for k in task_metrics([summary])}}


def _work_seconds(row: dict) -> float:
  """The measured seconds of a run's training work: train steps + batches (data) +
  scoring / selection, each timed directly by the loop (eval, checkpoints, compile and
  setup left out: they do not depend on the method)."""
  return row["train_seconds"] + (row.get("data_seconds") or 0.0) + row["score_seconds"]


def summarize(rows: Sequence[dict]) -> list[dict]:
  """Mean ± std (ddof 1) per cell over the runs with outcome "ok", with compute fractions
  relative to the mean of the full-data runs; other outcomes are counted, not averaged.

  Two wall-time ratios: `wall_fraction` = the cell's mean train + data + score seconds
  over the full runs' mean (the method-dependent work); `run_wall_fraction` = the mean
  over seeds of the whole run's wall seconds (setup, compile, evaluation and checkpoints
  included) over the same seed's full-data run (seeds without an ok full run left out).
  """
  full = [r for r in rows if r["method"] == "full" and r["outcome"] == "ok"]
  full_examples = np.mean([r["train_examples"] for r in full]) if full else np.nan
  full_seconds = np.mean([_work_seconds(r) for r in full]) if full else np.nan
  full_wall = {r["seed"]: r.get("wall_seconds") for r in full}
  groups: dict = {}
  for row in rows:
    groups.setdefault((row["method"], row["setting"]), []).append(row)
  table = []
  for (method, setting), group in groups.items():
    ok = [r for r in group if r["outcome"] == "ok"]
    bad = [f"seed {r['seed']}: {r['outcome']}" for r in group if r["outcome"] != "ok"]
    accs = np.asarray([r["test_accuracy"] for r in ok], np.float64)
    compute = np.asarray([(r["train_examples"] + FORWARD_COST * r["scored_examples"])
                          / full_examples for r in ok])
    wall = np.asarray([_work_seconds(r) / full_seconds for r in ok])
    timed = [r for r in ok if r.get("wall_seconds") is not None]
    run_wall = [r["wall_seconds"] / full_wall[r["seed"]] for r in timed
                if full_wall.get(r["seed"])]
    std = lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0
    ci_low, ci_high = t_interval(accs)
    table.append({
        "method": method, "label": LABELS[method], "setting": setting, "num_ok": len(ok),
        "not_ok": "; ".join(bad),
        "test_accuracy_mean": float(accs.mean()) if len(ok) else np.nan,
        "test_accuracy_std": std(accs),
        "test_accuracy_ci95_low": ci_low, "test_accuracy_ci95_high": ci_high,
        "compute_fraction": float(compute.mean()) if len(ok) else np.nan,
        "compute_fraction_std": std(compute),
        "wall_fraction": float(wall.mean()) if len(ok) else np.nan,
        "run_wall_seconds": _mean_std([r["wall_seconds"] for r in timed])["mean"],
        "score_seconds": _mean_std([r["score_seconds"] for r in ok])["mean"],
        "run_wall_fraction": float(np.mean(run_wall)) if run_wall else np.nan,
        "optimizer_steps": float(np.mean([r["optimizer_steps"] for r in ok])) if ok else np.nan,
        "scored_examples": float(np.mean([r["scored_examples"] for r in ok])) if ok else np.nan,
        **{f"{k}_{stat}": value for k in task_metrics(rows)
           for stat, value in _mean_std([r[k] for r in ok if r.get(k) is not None]).items()}})
  return sorted(table, key=lambda r: (METHODS.index(r["method"]), r["setting"]))


def paired_with_baselines(rows: Sequence[dict]) -> list[PairedStats]:
  """Every pruned cell against full data, and every keep-fraction cell against dynamic
  random at the same keep fraction, paired by seed index over the runs both ended ok.

  PairedStats.method is '<label>, <setting>' and .baseline the baseline's label; fraction
  is the keep fraction of the pair against random and 1.0 for the pair against full data.
  """
  def outcome(row, method, fraction):
    return RunOutcome(method, fraction, row["seed"], row["outcome"],
                      row["test_accuracy"] if row["outcome"] == "ok" else float("nan"))

  full = LABELS["full"]
  versus_full = [outcome(r, full if r["method"] == "full" else
                         f"{LABELS[r['method']]}, {r['setting']}", 1.0) for r in rows]
  keep_methods = [r for r in rows if r["method"] not in ("full", "infobatch")]
  versus_random = [outcome(r, f"{LABELS[r['method']]}, {r['setting']}"
                           if r["method"] != "dynamic_random" else LABELS["dynamic_random"],
                           float(r["param"])) for r in keep_methods]
  return (paired_comparisons(versus_full, baseline=full)
          + paired_comparisons(versus_random, baseline=LABELS["dynamic_random"]))


def markdown_paired(pairs: Sequence[PairedStats]) -> str:
  """The pairs against full data, then those against dynamic random, as markdown."""
  blocks = []
  for baseline, title in ((LABELS["full"], "against full data"),
                          (LABELS["dynamic_random"], "against dynamic random at the same "
                           "keep fraction")):
    mine = [p for p in pairs if p.baseline == baseline]
    if mine:
      # Against full data every pair is at 100 %: no fraction column.
      table = markdown_paired_table(
          mine, fraction_header=None if baseline == LABELS["full"] else "keep")
      blocks.append(f"Paired by seed {title} (test accuracy difference in points):\n\n"
                    + table)
  return "\n\n".join(blocks)


def _mean_std(values) -> dict:
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()) if len(values) else np.nan,
          "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def markdown_table(table, dataset, config: DynamicSweepConfig, missing=(),
                   pairs: Sequence[PairedStats] = ()) -> str:
  lines = [f"Dynamic pruning on {dataset.name} ({dataset.num_train} train examples), "
           f"{config.num_epochs} epochs ({config.budget} budget), warm-up "
           f"{config.warmup_epochs}, re-scoring every {config.rescore_every} epoch(s) "
           "(RS2: a new round every epoch from epoch 0), "
           f"strategy {config.strategy}; test accuracy mean ± std [95 % t-interval] over "
           "seeds (outcome ok). "
           f"Compute = (train examples + {FORWARD_COST:.2f} x scored examples) / full data's; "
           "wall = (train + data + score seconds, each measured) / full data's; "
           "run wall = the whole run's wall seconds (setup, evaluation, checkpoints "
           "included) / the same seed's full-data run's, averaged over seeds.\n",
           "| method | setting | test accuracy (%) | compute fraction | wall fraction | "
           "run wall fraction | optimizer steps | scored examples | runs ok | not ok |"]
  extra = task_metric_columns(table)
  lines[-1] = lines[-1].replace("| compute", "".join(
      f"| {k[len('test_'):].replace('_', ' ')} " for k in extra) + "| compute")
  lines.append("|---" * (10 + len(extra)) + "|")
  for r in table:
    acc = ("—" if not r["num_ok"] else
           f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f}")
    if r["num_ok"] > 1:
      acc += (f" [{100 * r['test_accuracy_ci95_low']:.2f}, "
              f"{100 * r['test_accuracy_ci95_high']:.2f}]")
    acc += "".join(" | —" if not r["num_ok"] else
                   f" | {r[k + '_mean']:.3f} ± {r[k + '_std']:.3f}" for k in extra)
    lines.append(f"| {r['label']} | {r['setting']} | {acc} | {r['compute_fraction']:.3f} | "
                 f"{r['wall_fraction']:.3f} | {r['run_wall_fraction']:.3f} | "
                 f"{r['optimizer_steps']:.0f} | "
                 f"{r['scored_examples']:.0f} | {r['num_ok']} | {r['not_ok'] or ''} |")
  text = "\n".join(lines)
  if pairs:
    text += "\n\n" + markdown_paired(pairs)
  if missing:
    text += ("\n\nPARTIAL: not finished yet: " + "; ".join(missing) + ".")
  return text


def write_results(root: str, rows, missing, dataset, config: DynamicSweepConfig) -> dict:
  results = os.path.join(root, "results")
  paths = {"runs_csv": os.path.join(results, "runs.csv"),
           "csv": os.path.join(results, "results.csv"),
           "paired_csv": os.path.join(results, "paired.csv"),
           "markdown": os.path.join(results, "results.md"),
           "plot": os.path.join(results, "accuracy_vs_compute.png")}
  table = summarize(rows)
  pairs = paired_with_baselines(rows)
  os.makedirs(results, exist_ok=True)
  artifacts.write_csv(paths["runs_csv"], rows) if rows else None
  artifacts.write_csv(paths["csv"], table) if table else None
  artifacts.write_csv(paths["paired_csv"], pairs_as_rows(pairs)) if pairs else None
  artifacts.write_text(paths["markdown"], markdown_table(table, dataset, config, missing,
                                                         pairs))
  plot_accuracy_vs_compute(paths["plot"], table, dataset, config, bool(missing))
  log.info("dynamic sweep: %d runs reported, %d missing; table %s, plot %s", len(rows),
           len(missing), paths["markdown"], paths["plot"])
  return paths


def plot_accuracy_vs_compute(path: str, table, dataset, config, partial: bool) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7.0, 4.6))
  markers = dict(zip(METHODS, "*sDo^vXP"))
  for method in dict.fromkeys(r["method"] for r in table):
    points = sorted((r for r in table if r["method"] == method and r["num_ok"]),
                    key=lambda r: r["compute_fraction"])
    if not points:
      continue
    ax.errorbar([r["compute_fraction"] for r in points],
                [100 * r["test_accuracy_mean"] for r in points],
                yerr=[100 * r["test_accuracy_std"] for r in points],
                xerr=[r["compute_fraction_std"] for r in points], marker=markers[method],
                markersize=9 if method == "full" else 6, capsize=3,
                linestyle="none" if method == "full" else "-", label=LABELS[method])
    for r in points:
      if r["setting"] != "all data":
        ax.annotate(r["setting"].replace("keep ", ""), (r["compute_fraction"],
                                                        100 * r["test_accuracy_mean"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel(f"fraction of full-data training compute used (scoring counted at "
                f"{FORWARD_COST:.2f})")
  ax.set_ylabel("final test accuracy (%)")
  ax.set_title(f"{dataset.name}: dynamic pruning, {config.num_epochs} epochs"
               + (" (PARTIAL)" if partial else ""))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  artifacts.write_png(path, fig)
