"""Adding pool examples by score, as one resumable pipeline.

The setting of "Comprehensive Benchmarking of Entropy and Margin Based Scoring Metrics for
Data Selection" (2023): a model trained on a base training set scores a candidate pool
(entropy -sum p log p of its softmax, or EL2N ||softmax - onehot(y)||_2 with the pool's
given labels); the k highest-scoring pool examples are added to the training set, and a
model trained on base + top-k is compared with one trained on base + k random pool
examples (and with the base model itself).

  base run (base_ids) -> restore its last step -> score the pool (R = 1 member)
  -> top-k by score, k at random -> train on base + top-k and on base + random-k
  -> results table (CSV + markdown)

Every run trains the same number of steps as the base run (train.num_steps) and, unless
`train.schedule_steps_per_epoch` is set, counts the lr schedule's epochs in epochs of the
*base* set, so the lr decays at the same steps in all three runs.

Layout under <workdir>/pool/:
  config.json                      what the runs were made with (a rerun must match)
  base_ids.npy, pool_ids.npy       dataset ids of the base set and of the candidate pool
  base/seed_<m>/                   the base run; pool_scores_<score>.npy (+ .json): f32[P]
                                   scores of the pool (in pool_ids order) under its last step;
                                   with K workers also its K example shards
                                   (pool_scores_<score>.shard_<i>of<K>.npz/.json) and their
                                   locks (pool_shards/<i>_of_<K>/)
  top_<score>_k<k>/seed_<m>/       base + top-k run; added_ids.npy, train_ids.npy
  random_k<k>/seed_<m>/            base + random-k run; added_ids.npy, train_ids.npy
  results.csv, results.md          test accuracy per seed and mean

Rerunning skips finished runs and saved scores, and resumes interrupted runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Callable, Optional

import jax
import numpy as np

from datadiet_jax import artifacts
from datadiet_jax.prune.pool import random_from_pool, select_from_pool
from datadiet_jax.scores import eval_apply_fn, score_ensemble
from datadiet_jax.train.ensemble import stack_trees
from datadiet_jax.scores.shards import (fingerprint, merge_shards, save_shard, shard_files,
                                        shards_on_disk)
from datadiet_jax.sweep import lock as run_lock
from datadiet_jax.sweep.lock import RunLockedError, describe
from datadiet_jax.sweep.partition import Worker
from datadiet_jax.sweep.runner import Task, run_all
from datadiet_jax.train.loop import TrainConfig, is_finished, restore_run_state, train_run
from datadiet_jax.train.state import model_variables
from datadiet_jax.pipelines.train_runs import train_task
from datadiet_jax.pipelines.train_runs import check_config

log = logging.getLogger("datadiet_jax")

POOL_SCORES = ("entropy", "el2n")
RANDOM_SEED_BASE, RANDOM_SEED_STRIDE = 4426, 424242
SCORE_LABELS = {"entropy": "entropy", "el2n": "EL2N"}
RESULT_FIELDS = ("method", "key", "seed", "num_train_examples", "num_added", "num_steps",
                 "test_accuracy", "test_accuracy_std", "test_loss", "added_mean_score")


def random_pick_seed(seed: int) -> int:
  """Seed of seed m's random pick from the pool: 4426 + m * 424242."""
  return RANDOM_SEED_BASE + int(seed) * RANDOM_SEED_STRIDE


# ----------------------------------------------------------------------------- splitting


def split_base_and_pool(labels, base_per_class: int, pool_size: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits a training set into a class-balanced base set and a uniform candidate pool.

  labels: i*[N] the training labels. base_per_class: examples of *every* class present in
  `labels` put into the base set. pool_size: examples drawn uniformly without replacement
  from the rest. seed: one `np.random.RandomState(seed)` draws the base (class by class, in
  ascending class order) and then the pool.

  Returns (base_ids i32[C * base_per_class], pool_ids i32[pool_size]): disjoint, sorted
  dataset ids; the same arguments always give the same split.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or len(labels) == 0:
    raise ValueError(f"labels must be a non-empty 1-D array, got shape {list(labels.shape)}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  base_per_class = _positive_int(base_per_class, "base_per_class")
  pool_size = _positive_int(pool_size, "pool_size")
  if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
  rng = np.random.RandomState(int(seed))
  base = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < base_per_class:
      raise ValueError(f"class {c} has {len(members)} training examples, fewer than "
                       f"base_per_class={base_per_class}; lower it")
    base.append(rng.choice(members, base_per_class, replace=False))
  base_ids = np.sort(np.concatenate(base)).astype(np.int32)
  rest = np.setdiff1d(np.arange(len(labels)), base_ids)
  if pool_size > len(rest):
    raise ValueError(f"pool_size={pool_size} exceeds the {len(rest)} examples left after the "
                     f"base set ({len(base_ids)} of {len(labels)}); lower it or base_per_class")
  pool_ids = np.sort(rng.choice(rest, pool_size, replace=False)).astype(np.int32)
  return base_ids, pool_ids


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


def _check_ids(ids, name: str, num_train: int) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim != 1 or len(ids) == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array of dataset ids, got shape "
                     f"{list(ids.shape)}")
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{name} must be integer dataset ids, got {ids.dtype}")
  if ids.min() < 0 or ids.max() >= num_train:
    raise ValueError(f"{name} must lie in [0, {num_train}) (the training set), got ids in "
                     f"[{ids.min()}, {ids.max()}]")
  if len(np.unique(ids)) != len(ids):
    raise ValueError(f"{name} contains repeated ids")
  return np.sort(ids).astype(np.int32)


def validate_pool_inputs(dataset, base_ids, pool_ids, k: int,
                         score_name: str) -> tuple[np.ndarray, np.ndarray, int]:
  """Checks the arguments of `run_pool_selection`; returns (sorted base, sorted pool, k)."""
  if score_name not in POOL_SCORES:
    raise ValueError(f"unknown pool score {score_name!r}: use one of {', '.join(POOL_SCORES)}")
  base_ids = _check_ids(base_ids, "base_ids", dataset.num_train)
  pool_ids = _check_ids(pool_ids, "pool_ids", dataset.num_train)
  overlap = np.intersect1d(base_ids, pool_ids)
  if len(overlap):
    raise ValueError(f"base_ids and pool_ids overlap in {len(overlap)} ids (e.g. "
                     f"{overlap[:5].tolist()}); the pool must be disjoint from the base set")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f"k must be an int, got {k!r}")
  if k < 1:
    raise ValueError(f"k must be >= 1 (pool examples to add), got {k}")
  if k > len(pool_ids):
    raise ValueError(f"k={k} exceeds the pool size {len(pool_ids)}")
  return base_ids, pool_ids, int(k)


# ----------------------------------------------------------------------------- pipeline


def _digest(ids: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()[:16]


def _write_or_check_ids(path: str, ids: np.ndarray) -> None:
  if os.path.exists(path):
    if not np.array_equal(np.load(path), ids):
      raise ValueError(f"{path} holds other ids than this call selects (the base run, its "
                       "scores or the settings changed since it was made); use a new workdir")
  else:
    artifacts.write_npy(path, ids.astype(np.int32))


def score_pool(base_dir: str, step: int, model, dataset, optimizer, train: TrainConfig,
               seeds: tuple[int, int], base_ids, pool_ids, score_name: str,
               batch_size: int = 128, progress: bool = True) -> tuple[np.ndarray, str]:
  """Scores of train examples pool_ids (images or text) under `step` of the base run (R = 1),
  in compiled calls of exactly batch_size examples (pass min(batch_size, pool size)).

  Returns (f32[len(pool_ids)], the fingerprint of the restored model variables)."""
  state, _ = restore_run_state(base_dir, step, model, dataset, optimizer, train, *seeds,
                               example_ids=base_ids)
  variables = model_variables(state)
  model_fingerprint = fingerprint(jax.tree_util.tree_leaves(variables))
  if len(pool_ids) == 0:  # an empty shard (more workers than score batches)
    return np.zeros([0], np.float32), model_fingerprint
  stacked = stack_trees([variables])
  mean, _, _ = score_ensemble(score_name, eval_apply_fn(model), stacked,
                              dataset.train_inputs(pool_ids), dataset.train_targets(pool_ids),
                              batch_size, getattr(dataset, "mean", None),
                              getattr(dataset, "std", None), progress, exact_batch=True)
  return mean.astype(np.float32), model_fingerprint


def pool_scores_path(base_dir: str, score_name: str) -> str:
  return os.path.join(base_dir, f"pool_scores_{score_name}.npy")


def score_pool_shard(base_dir: str, shard: Worker, step: int, model, dataset, optimizer,
                     train: TrainConfig, seeds: tuple[int, int], base_ids, pool_ids,
                     score_name: str, batch_size: int, progress: bool) -> bool:
  """Scores shard.index of shard.count of one seed's pool (whole score batches of pool
  positions) into a shard file (the whole
  pool into pool_scores_<score>.npy when shard.count == 1); the call that completes the
  last shard merges them (datadiet_jax/scores/shards.py refuses shards made from other
  checkpoints or settings). Returns True if it scored anything."""
  path = pool_scores_path(base_dir, score_name)
  if os.path.exists(path):
    return False
  base = path[:-len(".npy")]
  if shard.count > 1 and os.path.exists(shard_files(base, shard.index, shard.count)["json"]):
    _merge_pool_shards(path, shard.count)
    return False
  # Shards split at whole score batches, so every example is scored in the same batch as
  # in one process (bit-identical scores, whatever the worker count).
  batch = min(batch_size, len(pool_ids))
  first, last = shard.example_range(-(-len(pool_ids) // batch))
  start, stop = first * batch, min(last * batch, len(pool_ids))
  scores, model_fingerprint = score_pool(base_dir, step, model, dataset, optimizer, train,
                                         seeds, base_ids, pool_ids[start:stop], score_name,
                                         batch, progress)
  sidecar = {"score": score_name, "step": step, "num_members": 1,
             "pool_size": len(pool_ids), "pool_ids_sha256": _digest(pool_ids),
             "indexed_by": "pool_ids.npy order (dataset ids sorted ascending)",
             "model_seed": seeds[0], "data_seed": seeds[1],
             "model_fingerprint": model_fingerprint, "score_batch_size": batch_size}
  if shard.count == 1:
    _write_pool_scores(path, scores, sidecar)
  else:
    save_shard(base, {"pool_score": score_name}, shard.index, shard.count, start, stop,
               len(pool_ids), {"mean": scores}, sidecar)
    _merge_pool_shards(path, shard.count)
  return True


def _merge_pool_shards(path: str, count: int) -> None:
  base = path[:-len(".npy")]
  if len(shards_on_disk(base, count)) == count and not os.path.exists(path):
    arrays, sidecar = merge_shards(base, os.path.basename(base), count)
    _write_pool_scores(path, arrays["mean"], sidecar)
    log.info("pool scores: %d shards merged -> %s", count, path)


def _write_pool_scores(path: str, scores: np.ndarray, sidecar: dict) -> None:
  artifacts.write_json(path[:-len(".npy")] + ".json", sidecar)
  artifacts.write_npy(path, scores)  # last: its presence marks complete scores


@dataclasses.dataclass(frozen=True)
class PoolSelectionConfig:
  """What the experiment adds and how often it repeats.

  k: pool examples added, in [1, pool size].
  score_name: 'entropy' or 'el2n' (EL2N uses the pool's labels in the dataset).
  num_seeds: seeds m = 0..num_seeds-1; each has its own base run, scores and picks.
  score_batch_size: pool examples per compiled scoring call.
  """

  k: int
  score_name: str = "entropy"
  num_seeds: int = 1
  score_batch_size: int = 128

  def __post_init__(self):
    if self.score_name not in POOL_SCORES:
      raise ValueError(f"unknown pool score {self.score_name!r}: use one of "
                       f"{', '.join(POOL_SCORES)}")
    if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)):
      raise ValueError(f"k must be an int, got {self.k!r}")
    if self.k < 1:
      raise ValueError(f"k must be >= 1 (pool examples to add), got {self.k}")
    _positive_int(self.num_seeds, "num_seeds")
    _positive_int(self.score_batch_size, "score_batch_size")


def run_pool_selection(workdir: str, dataset, model, optimizer, train: TrainConfig, base_ids,
                       pool_ids, config: PoolSelectionConfig,
                       seeds_of: Callable[[int], tuple[int, int]], progress: bool = True,
                       mesh=None, worker: Worker = Worker()) -> dict:
  """Runs (or resumes) the pool-selection experiment; see the module docstring.

  Args:
    workdir: outputs go to workdir/pool/.
    dataset, model, optimizer, train: as for `train_run`; every run trains
      train.num_steps steps.
    base_ids, pool_ids: disjoint dataset ids of the base set and the candidate pool.
    config: k (at most len(pool_ids)), the score, the seeds, the score batch size.
    seeds_of: m -> (model seed, data seed) of seed m's three runs.
    worker: worker i of K trains the base runs of the seeds m with m % K == i, then any
      base run no live process holds, and waits for the rest; scores example shard i of
      every seed's pool (then any shard no live process holds; the last shard's scorer
      merges them); trains the added runs of its seeds and reports the finished ones of
      the others.

  Returns:
    {'rows': per-seed rows, 'summary': mean rows, 'trainings_run': runs trained in this
     call, 'scores_computed': pool scorings (or pool shards) done in this call, 'pool_scores': {m: f32[P]},
     'added': {m: {'top': ids, 'random': ids}} (dataset ids), 'base_ids', 'pool_ids',
     'paths': {'csv', 'markdown', 'folder'}, 'missing': runs not finished (other workers)}.
  """
  score_name, num_seeds = config.score_name, config.num_seeds
  score_batch_size = config.score_batch_size
  base_ids, pool_ids, k = validate_pool_inputs(dataset, base_ids, pool_ids, config.k,
                                               score_name)
  folder = os.path.join(workdir, "pool")
  base_steps_per_epoch = len(base_ids) // train.batch_size
  if base_steps_per_epoch == 0:
    raise ValueError(f"the base set ({len(base_ids)} examples) is smaller than one batch "
                     f"({train.batch_size}); lower the batch size or enlarge the base set")
  if train.schedule_steps_per_epoch == 0:
    train = dataclasses.replace(train, schedule_steps_per_epoch=base_steps_per_epoch)
  check_config(folder, {
      "dataset": dataset.name, "num_train": dataset.num_train,
      "example_order": dataset.example_order, "model": repr(model),
      "optimizer": dataclasses.asdict(optimizer), "train": dataclasses.asdict(train),
      "num_base": len(base_ids), "base_ids_sha256": _digest(base_ids),
      "num_pool": len(pool_ids), "pool_ids_sha256": _digest(pool_ids)})
  _write_or_check_ids(os.path.join(folder, "base_ids.npy"), base_ids)
  _write_or_check_ids(os.path.join(folder, "pool_ids.npy"), pool_ids)
  label = SCORE_LABELS[score_name]
  top_key, random_key = f"top_{score_name}_k{k}", f"random_k{k}"
  rows, pool_scores, added, missing = [], {}, {}, []

  base_dirs = [os.path.join(folder, "base", f"seed_{m}") for m in range(num_seeds)]
  # 1. Every seed's base run: this worker's seeds, then any no live process holds; waits
  #    for the rest (the pool scores of every seed are split over all workers).
  base_trained = []

  def base_task(m: int) -> Task:
    task = train_task(f"base, seed {m}", base_dirs[m], train.num_steps, model, dataset,
                      optimizer, train, *seeds_of(m), example_ids=base_ids, progress=progress,
                      mesh=mesh, desc=f"base, seed {m}", lock_label=worker.label)
    return dataclasses.replace(
        task, run=lambda: base_trained.append(task.run().steps_trained > 0))

  run_all([base_task(m) for m in range(num_seeds)], worker)
  trainings_run = sum(base_trained)
  # 2. The pool scores of every seed, in K example shards: worker i scores shard i of each
  #    seed first (task position m * K + j), then any shard no live process holds.
  computed = []

  def score_task(m: int, shard: Worker) -> Task:
    def run():
      with run_lock.hold(os.path.join(base_dirs[m], "pool_shards",
                                      f"{shard.index}_of_{shard.count}"), worker.label):
        computed.append(score_pool_shard(
            base_dirs[m], shard, train.num_steps, model, dataset, optimizer, train,
            seeds_of(m), base_ids, pool_ids, score_name, score_batch_size, progress))
    return Task(f"pool scores, seed {m}" + (f", shard {shard.index} of {shard.count}"
                                            if shard.count > 1 else ""),
                lambda: os.path.exists(pool_scores_path(base_dirs[m], score_name)), run)

  run_all([score_task(m, Worker(worker.count, j)) for m in range(num_seeds)
           for j in range(worker.count)], worker)
  scores_computed = sum(computed)

  def train_or_skip(run_dir, m, desc, **kwargs):
    """train_run for this worker's seeds, else (or if locked elsewhere) a finished run's
    result or None."""
    if worker.owns(m) or is_finished(run_dir, train.num_steps):
      try:
        return train_run(run_dir, model, dataset, optimizer, train, *seeds_of(m),
                         progress=progress, mesh=mesh, desc=desc, lock_label=worker.label,
                         **kwargs)
      except RunLockedError as error:
        log.info("%s: skipped, %s is training it", desc, describe(error.holder))
    missing.append(desc)
    return None

  # 3. The added runs: worker i trains those of its seeds and reports the others' finished.
  for m in range(num_seeds):
    result = train_or_skip(base_dirs[m], m, f"base, seed {m}", example_ids=base_ids)
    if result is None:
      continue
    trainings_run += result.steps_trained > 0
    rows.append(_row("base", "base", m, len(base_ids), 0, train, result, None))
    scores_path = pool_scores_path(base_dirs[m], score_name)
    scores = np.load(scores_path)
    if scores.shape != (len(pool_ids),):
      raise ValueError(f"{scores_path} has shape {list(scores.shape)}, not the pool's "
                       f"[{len(pool_ids)}]; use a new workdir")
    pool_scores[m] = scores

    picks = {"top": select_from_pool(scores, k, "top"),
             "random": random_from_pool(len(pool_ids), k, random_pick_seed(m))}
    added[m] = {}
    for kind, key, method in (("top", top_key, f"base + top-{k} {label}"),
                              ("random", random_key, f"base + random-{k}")):
      run_folder = os.path.join(folder, key, f"seed_{m}")
      added_ids = pool_ids[picks[kind]]
      train_ids = np.sort(np.concatenate([base_ids, added_ids])).astype(np.int32)
      _write_or_check_ids(os.path.join(run_folder, "added_ids.npy"), added_ids)
      _write_or_check_ids(os.path.join(run_folder, "train_ids.npy"), train_ids)
      result = train_or_skip(run_folder, m, f"{method}, seed {m}", example_ids=train_ids)
      if result is None:
        continue
      trainings_run += result.steps_trained > 0
      added[m][kind] = added_ids
      rows.append(_row(method, key, m, len(train_ids), k, train, result,
                       float(scores[picks[kind]].mean())))

  summary = summarize(rows)
  paths = {"folder": folder, "csv": os.path.join(folder, "results.csv"),
           "markdown": os.path.join(folder, "results.md")}
  artifacts.write_csv(paths["csv"], rows + summary, RESULT_FIELDS)
  artifacts.write_text(paths["markdown"], markdown_table(rows, summary, dataset, train, k,
                                                         len(base_ids), len(pool_ids), label))
  log.info("pool selection: %d trainings and %d scorings in this call; table %s",
           trainings_run, scores_computed, paths["markdown"])
  if missing:
    log.info("pool selection%s: not finished yet (other workers): %s", f" ({worker.label})"
             * bool(worker.label), "; ".join(missing))
  return {"rows": rows, "summary": summary, "trainings_run": trainings_run,
          "scores_computed": scores_computed, "pool_scores": pool_scores, "added": added,
          "base_ids": base_ids, "pool_ids": pool_ids, "paths": paths, "missing": missing}


def _row(method: str, key: str, seed: int, num_train: int, num_added: int, train: TrainConfig,
         result, added_mean_score: Optional[float]) -> dict:
  return {"method": method, "key": key, "seed": seed, "num_train_examples": num_train,
          "num_added": num_added, "num_steps": train.num_steps,
          "test_accuracy": float(result.test_accuracy), "test_accuracy_std": "",
          "test_loss": float(result.test_loss),
          "added_mean_score": "" if added_mean_score is None else added_mean_score}


def summarize(rows) -> list[dict]:
  """One 'mean' row per method: mean test accuracy / loss, std over seeds (ddof 1)."""
  summary = []
  for key in dict.fromkeys(r["key"] for r in rows):
    group = [r for r in rows if r["key"] == key]
    accs = np.asarray([r["test_accuracy"] for r in group], np.float64)
    scores = [r["added_mean_score"] for r in group if r["added_mean_score"] != ""]
    summary.append({
        **{f: group[0][f] for f in ("method", "key", "num_train_examples", "num_added",
                                   "num_steps")},
        "seed": "mean", "test_accuracy": float(accs.mean()),
        "test_accuracy_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "test_loss": float(np.mean([r["test_loss"] for r in group])),
        "added_mean_score": float(np.mean(scores)) if scores else ""})
  return summary


def markdown_table(rows, summary, dataset, train: TrainConfig, k: int, num_base: int,
                   num_pool: int, label: str) -> str:
  keys = [s["key"] for s in summary]
  methods = [s["method"] for s in summary]
  seeds = sorted({r["seed"] for r in rows})
  cell = {(r["key"], r["seed"]): r for r in rows}
  text = (f"Test accuracy (%) on {dataset.name} ({dataset.num_test} test images): a base set "
          f"of {num_base} examples, {k} of a {num_pool}-example pool added by {label} (top-{k} "
          f"under the base model) or at random; every run trains {train.num_steps} steps "
          f"(batch {train.batch_size}).\n\n")
  text += "| seed | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods) + "\n"
  for m in seeds:
    text += f"| {m} | " + " | ".join(f"{100 * cell[(key, m)]['test_accuracy']:.2f}"
                                     if (key, m) in cell else "not finished"
                                     for key in keys) + " |\n"
  text += "| mean | " + " | ".join(
      f"{100 * s['test_accuracy']:.2f}" + (f" ± {100 * s['test_accuracy_std']:.2f}"
                                           if len(seeds) > 1 else "")
      for s in summary) + " |\n"
  added = [s for s in summary if s["added_mean_score"] != ""]
  text += (f"\nMean {label} (under the base model) of the added pool examples: "
           + ", ".join(f"{s['method']}: {s['added_mean_score']:.4f}" for s in added) + ".\n")
  return text
