"""When to score ("BERT on a Data Diet"): scores taken at several points of the score runs.

The Figure-1 score runs (experiments/figure1.py compute_scores, reused) train to the last
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

from datadiet_jax import artifacts
from datadiet_jax.prune import original_random_seed, resolve_size, select
from datadiet_jax.sweep.partition import Worker
from datadiet_jax.sweep.runner import run_all
from datadiet_jax.train.loop import TrainConfig, train_run
from datadiet_jax.pipelines.figure1 import Figure1Config, Method, _write_or_check_ids, compute_scores
from datadiet_jax.pipelines.train_runs import train_task

log = logging.getLogger("datadiet_jax")


def point_steps(points: Sequence[float], steps_per_epoch: int) -> tuple[int, list[int]]:
  """(grid, steps): the checkpoint grid (the smallest point's step, >= 1) and each point's
  step, rounded to a multiple of the grid (>= grid)."""
  if not points or min(points) <= 0:
    raise ValueError(f"--score_timing_points must be positive fractions of an epoch, got "
                     f"{list(points)}")
  grid = max(1, int(round(min(points) * steps_per_epoch)))
  return grid, [grid * max(1, int(round(p * steps_per_epoch / grid))) for p in points]


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


def run_score_timing(workdir: str, dataset, model, optimizer, base_train: TrainConfig,
                     config: Figure1Config, points: Sequence[float], seeds_of,
                     score: str = "el2n", prune_fraction: float = 0.5,
                     progress: bool = True, worker: Worker = Worker()) -> dict:
  """Runs (or resumes) the study; returns {'rows', 'paths'}. config: the Figure-1 config
  (score runs, seeds, score batch size); its score_step is replaced by each point's.
  worker: worker i of K (compute_scores' sharing for the score runs and the score shards;
  the retrainings round robin, then any no live process holds; every worker waits for
  all and writes the same table)."""
  from scipy.stats import spearmanr
  n, batch = dataset.num_train, base_train.batch_size
  grid, steps = point_steps(points, n // batch)
  last = max(steps)
  scores = {}
  for step in sorted(set(steps), reverse=True):  # the last first: it trains the score runs
    point = dataclasses.replace(config, score_names=(score,), methods=(), score_step=step,
                                score_train_steps=last, num_seeds=config.num_seeds)
    scores[step] = compute_scores(workdir, dataset, model, optimizer, base_train, point,
                                  seeds_of, progress, worker=worker,
                                  early_save_steps=grid)[score]
  keep = resolve_size(n, prune_fraction=prune_fraction)
  labels = np.asarray(dataset.train_labels)
  train = dataclasses.replace(base_train, schedule_steps_per_epoch=n // batch)
  folder = os.path.join(workdir, "timing")
  method = Method(score, "hardest")
  retrainings = [("random", select("random", None, labels, keep, original_random_seed(m)), m)
                 for m in range(config.num_seeds)]
  retrainings += [(os.path.join(method.key, f"step_{step}"),
                   select("keep_hardest", scores[step], labels, keep), m)
                  for step in steps for m in range(config.num_seeds)]
  tasks = []
  for sub, ids, seed in retrainings:
    path = os.path.join(folder, sub, f"seed_{seed}")
    _write_or_check_ids(os.path.join(path, "kept_ids.npy"), ids)
    tasks.append(train_task(f"{sub} seed {seed}", path, train.num_steps, model, dataset,
                            optimizer, train, *seeds_of(seed), example_ids=ids,
                            progress=progress, desc=f"{sub} seed {seed}",
                            lock_label=worker.label))
  run_all(tasks, worker)

  def retrain(sub, ids, seed):  # a finished run: reads its summary
    path = os.path.join(folder, sub, f"seed_{seed}")
    return train_run(path, model, dataset, optimizer, train, *seeds_of(seed), example_ids=ids,
                     progress=False, desc=f"{sub} seed {seed}").test_accuracy

  random_acc = [retrain(*r) for r in retrainings[:config.num_seeds]]
  rows = []
  for point, step in zip(points, steps):
    ids = select("keep_hardest", scores[step], labels, keep)
    accs = [retrain(os.path.join(method.key, f"step_{step}"), ids, m)
            for m in range(config.num_seeds)]
    rows.append({"score": score, "epoch_fraction": round(step / (n // batch), 4),
                 "requested_fraction": point, "step": step,
                 "spearman_vs_final": float(spearmanr(scores[step], scores[last])[0]),
                 **class_balance(labels, ids, dataset.num_classes),
                 "prune_fraction": prune_fraction, "num_seeds": len(accs),
                 "retrain_accuracy_mean": float(np.mean(accs)),
                 "retrain_accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                 "random_accuracy_mean": float(np.mean(random_acc))})
  paths = write_results(workdir, rows, dataset, score, last)
  return {"rows": rows, "paths": paths}


def write_results(workdir: str, rows, dataset, score: str, last: int) -> dict:
  results = os.path.join(workdir, "results")
  paths = {"csv": os.path.join(results, "score_timing.csv"),
           "markdown": os.path.join(results, "score_timing.md"),
           "plot": os.path.join(results, "score_timing.png")}
  artifacts.write_csv(paths["csv"], rows)
  lines = [f"When to score on {dataset.name} ({dataset.num_train} train examples): {score} "
           f"of the score runs at each step, Spearman with the step-{last} score, the class "
           f"balance of the kept subset (keep hardest, {rows[0]['prune_fraction']:.0%} pruned; "
           f"the full set's largest class share is {rows[0]['full_max_class_share']:.3f}), and "
           "the test accuracy of the retraining (mean ± std over n seeds; random subset of "
           f"the same size: {100 * rows[0]['random_accuracy_mean']:.2f} %).\n",
           "| epochs at scoring | step | Spearman vs final | label entropy ratio | "
           "max class share | retrain accuracy (%) | n |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['epoch_fraction']:.3g} | {r['step']} | {r['spearman_vs_final']:.3f} | "
                 f"{r['label_entropy_ratio']:.3f} | {r['max_class_share']:.3f} | "
                 f"{100 * r['retrain_accuracy_mean']:.2f} ± {100 * r['retrain_accuracy_std']:.2f}"
                 f" | {r['num_seeds']} |")
  artifacts.write_text(paths["markdown"], "\n".join(lines) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
  x = [r["epoch_fraction"] for r in rows]
  axes[0].plot(x, [r["spearman_vs_final"] for r in rows], "o-")
  axes[0].set_ylabel(f"Spearman vs step {last}")
  axes[1].plot(x, [r["label_entropy_ratio"] for r in rows], "o-", label="entropy ratio")
  axes[1].plot(x, [r["max_class_share"] for r in rows], "s-", label="max class share")
  axes[1].legend(fontsize=8)
  axes[1].set_ylabel("kept subset's labels")
  axes[2].errorbar(x, [100 * r["retrain_accuracy_mean"] for r in rows],
                   yerr=[100 * r["retrain_accuracy_std"] for r in rows], marker="o",
                   capsize=3, label=f"{score} keep hardest")
  axes[2].axhline(100 * rows[0]["random_accuracy_mean"], color="gray", linestyle="--",
                  label="random")
  axes[2].legend(fontsize=8)
  axes[2].set_ylabel(f"test accuracy (%), {rows[0]['prune_fraction']:.0%} pruned")
  for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("epochs of training when scored")
    ax.grid(alpha=0.3)
  fig.suptitle(f"{dataset.name}: when to score")
  fig.tight_layout()
  artifacts.write_png(paths["plot"], fig)
  return paths
