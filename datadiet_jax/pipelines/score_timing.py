"""When to score ("BERT on a Data Diet"): scores taken at several points of the score runs.

The Figure-1 score runs (pipelines/figure1.py compute_scores, reused) train to the last
point and checkpoint every grid step on the way; each point's checkpoints are scored, then:

  spearman_vs_final   rank correlation of the point's score with the last point's
  kept class balance  label entropy of the kept subset / the full train set's, and the
                      largest class's share of it (early subsets are label-imbalanced)
  retrain accuracy    test accuracy of `num_seeds` runs trained on the kept subset at
                      `prune_fraction` pruned (keep hardest), with random at the same size

Points are fractions of an epoch (e.g. 0.05, 0.25, 0.5, 1, 2), rounded to multiples of the
smallest point's step (the checkpoint grid); the table records the exact steps.

Layout under --workdir: score_runs/, scores/<score>/step_<k>.npy (figure 1's),
  timing/<score>-hardest/step_<k>/seed_<m>/, timing/random/seed_<m>/ (kept_ids.npy + a run),
  results/score_timing.csv, score_timing.md, score_timing.png
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import numpy as np

from datadiet_jax import artifacts, sweep_stats
from datadiet_jax.prune import original_random_seed, resolve_size, select
from datadiet_jax.sweep.partition import Worker
from datadiet_jax.sweep.runner import run_all
from datadiet_jax.train.loop import TrainConfig, run_paths, train_run
from datadiet_jax.pipelines.figure1 import Figure1Config, Method, _write_or_check_ids, compute_scores
from datadiet_jax.pipelines.train_runs import train_task

log = logging.getLogger("datadiet_jax")


def _check_points(points: Sequence[float]) -> None:
  if not points or min(points) < 0 or max(points) <= 0:
    raise ValueError(f"--score_timing_points must be fractions of an epoch >= 0 with one "
                     f"> 0, got {list(points)}")


def point_steps(points: Sequence[float], steps_per_epoch: int) -> tuple[int, list[int]]:
  """(grid, steps): the checkpoint grid (the smallest positive point's step, >= 1) and each
  point's step, rounded to a multiple of the grid (>= grid). A point 0 is step 0: the model
  before any training (a pretrained encoder with its freshly initialised task head)."""
  _check_points(points)
  grid = max(1, int(round(min(p for p in points if p > 0) * steps_per_epoch)))
  return grid, [0 if p == 0 else grid * max(1, int(round(p * steps_per_epoch / grid)))
                for p in points]


def class_balance(labels: np.ndarray, ids: np.ndarray, num_classes: int) -> dict:
  """Label entropy (nats) of `labels[ids]`, its ratio to the whole set's, the largest class
  share."""
  def entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
  kept = np.bincount(labels[ids], minlength=num_classes).astype(np.float64)
  full = np.bincount(labels, minlength=num_classes).astype(np.float64)
  return {"label_entropy": entropy(kept), "label_entropy_ratio": entropy(kept) / entropy(full),
          "max_class_share": float(kept.max() / kept.sum()),
          "full_max_class_share": float(full.max() / full.sum())}


@dataclasses.dataclass(frozen=True)
class ScoreTimingConfig:
  """What the study measures.

  points: when to score, in epochs of the score runs (e.g. 0.05, 0.25, 0.5, 1, 2; rounded
    to multiples of the first point's step).
  scores: every score is taken at every point from the same score runs.
  prune_fraction: fraction of the data pruned by each point's keep-hardest subset (and by
    the random subset of the same size it is paired with).
  """

  points: tuple[float, ...]
  scores: tuple[str, ...] = ("el2n",)
  prune_fraction: float = 0.5

  def __post_init__(self):
    object.__setattr__(self, "points", tuple(float(p) for p in self.points))
    object.__setattr__(self, "scores", tuple(self.scores))
    _check_points(self.points)
    if not 0 < self.prune_fraction < 1:
      raise ValueError("--score_timing_prune_fraction must lie in (0, 1)")


def run_score_timing(workdir: str, dataset, model, optimizer, base_train: TrainConfig,
                     config: Figure1Config, timing: ScoreTimingConfig, seeds_of,
                     progress: bool = True, worker: Worker = Worker()) -> dict:
  """Runs (or resumes) the study; returns {'rows', 'paths'}. config: the Figure-1 config
  (score runs, seeds, score batch size); its score_step is replaced by each point's.
  timing: the points, scores and prune fraction; each point's keep-hardest subset of each
  score is retrained `config.num_seeds` times, paired by seed with the random subset of
  the same size (same model and data seeds).
  worker: worker i of K (compute_scores' sharing for the score runs and the score shards;
  the retrainings round robin, then any no live process holds; every worker waits for
  all and writes the same table)."""
  from scipy.stats import spearmanr
  points, prune_fraction = timing.points, timing.prune_fraction
  scores = tuple(dict.fromkeys(timing.scores))
  n, batch = dataset.num_train, base_train.batch_size
  grid, steps = point_steps(points, n // batch)
  last = max(steps)
  values = {}  # (score, step) -> f32[N]
  for step in sorted(set(steps), reverse=True):  # the last first: it trains the score runs
    point = dataclasses.replace(config, score_names=scores, methods=(), score_step=step,
                                score_train_steps=last, num_seeds=config.num_seeds)
    taken = compute_scores(workdir, dataset, model, optimizer, base_train, point, seeds_of,
                           progress, worker=worker, early_save_steps=grid)
    values.update({(score, step): taken[score] for score in scores})
  keep = resolve_size(n, prune_fraction=prune_fraction)
  labels = np.asarray(dataset.train_labels)
  train = dataclasses.replace(base_train, schedule_steps_per_epoch=n // batch)
  folder = os.path.join(workdir, "timing")
  seeds = range(config.num_seeds)
  retrainings = [("random", "random", select("random", None, labels, keep,
                                             original_random_seed(m)), m) for m in seeds]
  retrainings += [(_method(score, step), os.path.join(Method(score, "hardest").key,
                                                      f"step_{step}"),
                   select("keep_hardest", values[score, step], labels, keep), m)
                  for score in scores for step in sorted(set(steps)) for m in seeds]
  tasks = []
  for _, sub, ids, seed in retrainings:
    path = os.path.join(folder, sub, f"seed_{seed}")
    _write_or_check_ids(os.path.join(path, "kept_ids.npy"), ids)
    tasks.append(train_task(f"{sub} seed {seed}", path, train.num_steps, model, dataset,
                            optimizer, train, *seeds_of(seed), example_ids=ids,
                            progress=progress, desc=f"{sub} seed {seed}",
                            lock_label=worker.label))
  run_all(tasks, worker)

  outcomes, metrics = [], {}
  for method, sub, ids, seed in retrainings:  # finished runs: each reads its summary
    path = os.path.join(folder, sub, f"seed_{seed}")
    result = train_run(path, model, dataset, optimizer, train, *seeds_of(seed),
                       example_ids=ids, progress=False, desc=f"{sub} seed {seed}")
    outcomes.append(sweep_stats.RunOutcome(method, prune_fraction, seed, result.outcome,
                                           result.test_accuracy))
    if result.outcome == "ok" and os.path.exists(run_paths(path)["summary"]):
      summary = artifacts.read_json(run_paths(path)["summary"])
      for k in sweep_stats.task_metrics([summary]):
        metrics.setdefault((method, k), []).append(float(summary[k]))
  cells = {c.method: c for c in sweep_stats.cell_stats(outcomes)}
  pairs = {p.method: p for p in sweep_stats.paired_comparisons(outcomes, "random")}
  extra = sweep_stats.task_metrics([{k: 0 for _, k in metrics}])
  rows = []
  for score in scores:
    for point, step in zip(points, steps):
      ids = select("keep_hardest", values[score, step], labels, keep)
      method = _method(score, step)
      cell, pair, random = cells[method], pairs[method], cells["random"]
      rows.append({
          "score": score, "epoch_fraction": round(step / (n // batch), 4),
          "requested_fraction": point, "step": step,
          "spearman_vs_final": float(spearmanr(values[score, step], values[score, last])[0]),
          **class_balance(labels, ids, dataset.num_classes),
          "prune_fraction": prune_fraction, "num_seeds": cell.num_runs,
          "num_ok": cell.num_ok, "num_diverged": cell.num_diverged,
          "num_failed": cell.num_failed,
          "retrain_accuracy_mean": cell.mean,
          "retrain_accuracy_std": cell.std if cell.num_ok > 1 else 0.0,
          "retrain_ci95_low": cell.ci_low, "retrain_ci95_high": cell.ci_high,
          "random_accuracy_mean": random.mean, "random_ci95_low": random.ci_low,
          "random_ci95_high": random.ci_high, "random_num_ok": random.num_ok,
          "paired_pairs": pair.num_pairs, "paired_difference_mean": pair.mean_difference,
          "paired_ci95_low": pair.ci_low, "paired_ci95_high": pair.ci_high,
          "paired_p_value": pair.p_value,
          **{f"retrain_{k}_mean": float(np.mean(metrics.get((method, k), [np.nan])))
             for k in extra},
          **{f"random_{k}_mean": float(np.mean(metrics.get(("random", k), [np.nan])))
             for k in extra},
          "cell_text": sweep_stats.cell_text(cell)})
  paths = write_results(workdir, rows, dataset, scores, last,
                        sweep_stats.outcome_summary_line(outcomes), cells["random"])
  return {"rows": rows, "paths": paths}


def _method(score: str, step: int) -> str:
  return f"{score}-hardest@step_{step}"


def _points(x: float) -> str:
  return "—" if np.isnan(x) else f"{100 * x:+.2f}"


def write_results(workdir: str, rows, dataset, scores: Sequence[str], last: int,
                  outcome_line: str, random_cell) -> dict:
  results = os.path.join(workdir, "results")
  paths = {"csv": os.path.join(results, "score_timing.csv"),
           "markdown": os.path.join(results, "score_timing.md"),
           "plot": os.path.join(results, "score_timing.png")}
  artifacts.write_csv(paths["csv"], rows)
  extra = [k[len("retrain_"):-len("_mean")] for k in rows[0]
           if k.startswith("retrain_test_") and k.endswith("_mean")]
  lines = [f"When to score on {dataset.name} ({dataset.num_train} train examples): "
           f"{', '.join(scores)} of the score runs at each step, Spearman with the same "
           f"score at step {last}, the class balance of the kept subset (keep hardest, "
           f"{rows[0]['prune_fraction']:.0%} pruned; the full set's largest class share is "
           f"{rows[0]['full_max_class_share']:.3f}), and the test accuracy of retraining on "
           "it: mean ± std [95 % t-interval] (n ok runs), and its difference from the random "
           "subset of the same size paired by seed (same model and data seeds), in points "
           "[95 % t-interval]. Random subset: "
           f"{sweep_stats.cell_text(random_cell)} %. {outcome_line}\n",
           "| score | epochs at scoring | step | Spearman vs final | label entropy ratio | "
           "max class share | retrain accuracy (%) | vs random (points) |"
           + "".join(f" {k[len('test_'):].replace('_', ' ')} |" for k in extra),
           "|---|---|---|---|---|---|---|---|" + "---|" * len(extra)]
  for r in rows:
    paired = ("—" if r["paired_pairs"] == 0 else _points(r["paired_difference_mean"])
              + ("" if r["paired_pairs"] < 2 else
                 f" [{_points(r['paired_ci95_low'])}, {_points(r['paired_ci95_high'])}]"))
    lines.append(f"| {r['score']} | {r['epoch_fraction']:.3g} | {r['step']} | "
                 f"{r['spearman_vs_final']:.3f} | {r['label_entropy_ratio']:.3f} | "
                 f"{r['max_class_share']:.3f} | {r['cell_text']} | {paired} |"
                 + "".join(f" {r[f'retrain_{k}_mean']:.3f} |" for k in extra))
  artifacts.write_text(paths["markdown"], "\n".join(lines) + "\n")
  from matplotlib.figure import Figure  # pyplot-free: no global backend switch
  fig = Figure(figsize=(12, 3.6))
  axes = fig.subplots(1, 3)
  for score in scores:
    own = [r for r in rows if r["score"] == score]
    x = [max(r["epoch_fraction"], 1e-3) for r in own]  # step 0 drawn at the axis' left end
    axes[0].plot(x, [r["spearman_vs_final"] for r in own], "o-", label=score)
    axes[1].plot(x, [r["label_entropy_ratio"] for r in own], "o-",
                 label=f"{score} entropy ratio")
    axes[1].plot(x, [r["max_class_share"] for r in own], "s--",
                 label=f"{score} max class share")
    mean = np.asarray([100 * r["retrain_accuracy_mean"] for r in own])
    low = np.asarray([100 * r["retrain_ci95_low"] for r in own])
    high = np.asarray([100 * r["retrain_ci95_high"] for r in own])
    yerr = np.where(np.isnan(low), 0, np.stack([mean - low, high - mean]))
    done = np.isfinite(mean)  # a point whose retrainings all failed has no accuracy
    axes[2].errorbar(np.asarray(x)[done], mean[done], yerr=yerr[:, done], marker="o",
                     capsize=3, label=f"{score} keep hardest")
  if random_cell.num_ok:
    axes[2].axhline(100 * random_cell.mean, color="gray", linestyle="--", label="random")
    if random_cell.num_ok > 1:
      axes[2].axhspan(100 * random_cell.ci_low, 100 * random_cell.ci_high, color="gray",
                      alpha=0.15)
  axes[0].set_ylabel(f"Spearman vs step {last}")
  axes[1].set_ylabel("kept subset's labels")
  axes[2].set_ylabel(f"test accuracy (%), {rows[0]['prune_fraction']:.0%} pruned")
  x_all = [max(r["epoch_fraction"], 1e-3) for r in rows]
  for ax in axes:
    ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(min(x_all) / 1.5, max(x_all) * 1.5)
    ax.set_xlabel("epochs of training when scored" + (" (step 0 at 1e-3)"
                                                     if min(r["step"] for r in rows) == 0
                                                     else ""))
    ax.grid(alpha=0.3)
  fig.suptitle(f"{dataset.name}: when to score (mean and 95 % t-interval)")
  fig.tight_layout()
  artifacts.write_png(paths["plot"], fig)
  return paths
