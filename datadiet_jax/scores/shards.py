"""Scores computed in example shards by several workers, and merged into one score file.

Worker i of K scores the contiguous example positions [i*N//K, (i+1)*N//K) and writes

  scores/<score>/step_<k>.shard_<i>of<K>.npz    mean f32[n_i], std f32[n_i]?, runs f32[R, n_i]?
  scores/<score>/step_<k>.shard_<i>of<K>.json   start, stop, and the settings (below)

(the .json is written last: its presence marks a complete shard). `merge_score_shards`
checks that the K shards tile [0, N) and were made with the same *settings* - checkpoint
fingerprint, step, seeds, runs, dataset, example order, score batch settings, ... - then
writes the one score file with `io.save_scores` (sidecar included). Shards that disagree
are refused with a ScoreError naming the differing setting (a user error: exit 2).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from typing import Optional

import numpy as np

from datadiet_jax import artifacts
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.io import _file_name, save_scores, score_paths

_SHARD_RE = re.compile(r"\.shard_(\d+)of(\d+)\.json$")


def shard_paths(workdir: str, score: str, step: int, index: int, count: int) -> dict:
  """{'data': ....npz, 'json': ....json} of shard `index` of `count`."""
  base = score_paths(workdir, score, step)["mean"][:-len(".npy")]
  base += f".shard_{int(index)}of{int(count)}"
  return {"data": base + ".npz", "json": base + ".json"}


def fingerprint(tree_leaves) -> str:
  """sha256 (first 16 hex digits) of arrays' shapes, dtypes and bytes: identifies the exact
  checkpoints (or inputs) a shard was scored with."""
  digest = hashlib.sha256()
  for leaf in tree_leaves:
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{leaf.shape}{leaf.dtype}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:16]


def save_score_shard(workdir: str, score: str, step: int, index: int, count: int,
                     start: int, stop: int, num_examples: int, mean, std=None, per_run=None,
                     settings: Optional[dict] = None) -> str:
  """Writes shard `index` of `count` (examples [start, stop) of `num_examples`).

  mean: f32[stop - start]; std: same or None; per_run: f32[R, stop - start] or None.
  settings: JSON-able values every shard must share (checked by merge_score_shards).
  """
  score = _file_name(score)  # a score name, or grand_init
  mean = np.asarray(mean, np.float32)
  if mean.shape != (stop - start,):
    raise ScoreError(f"shard {index}of{count} of {score}@{step}: {mean.shape[0]} scores for "
                     f"examples [{start}, {stop})")
  paths = shard_paths(workdir, score, step, index, count)
  arrays = {"mean": mean}
  if std is not None:
    arrays["std"] = np.asarray(std, np.float32)
  if per_run is not None:
    arrays["runs"] = np.asarray(per_run, np.float32)
  with artifacts.atomic_path(paths["data"]) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  artifacts.write_json(paths["json"], {
      "score": score, "step": int(step), "shard": int(index), "num_shards": int(count),
      "start": int(start), "stop": int(stop), "num_examples": int(num_examples),
      "settings": settings or {}})
  return paths["json"]


def shards_present(workdir: str, score: str, step: int, count: int) -> list[int]:
  """Indices of the complete shards of `count` that exist."""
  return [i for i in range(count)
          if os.path.exists(shard_paths(workdir, score, step, i, count)["json"])]


def merge_score_shards(workdir: str, score: str, step: int,
                       count: Optional[int] = None) -> str:
  """Merges the shards of `score`@`step` into the score file; returns the mean's path.

  count: the number of shards (default: the one the shard files on disk say; several
  counts on disk are an error). Raises ScoreError if a shard is missing, the shards do not
  tile the examples, or their settings differ.
  """
  score = _file_name(score)  # a score name, or grand_init
  what = f"{score}@{step}"
  if count is None:
    pattern = shard_paths(workdir, score, step, 0, 1)["json"].replace(".shard_0of1.json",
                                                                      ".shard_*of*.json")
    counts = sorted({int(m.group(2)) for m in map(_SHARD_RE.search, glob.glob(pattern)) if m})
    if not counts:
      raise ScoreError(f"no score shards of {what} in {os.path.join(workdir, 'scores')}; "
                       "score with --num_workers/--worker_index first")
    if len(counts) > 1:
      raise ScoreError(f"score shards of {what} were made for different worker counts "
                       f"{counts}; delete the shards of the other count and rescore them")
    count = counts[0]
  missing = sorted(set(range(count)) - set(shards_present(workdir, score, step, count)))
  if missing:
    raise ScoreError(f"score shards {missing} of {count} for {what} are missing; run those "
                     "workers (--worker_index) with the same flags, then merge")
  records = [artifacts.read_json(shard_paths(workdir, score, step, i, count)["json"])
             for i in range(count)]
  _check_compatible(records, what)
  num_examples = records[0]["num_examples"]
  edges = [(r["start"], r["stop"]) for r in records]
  if edges[0][0] != 0 or edges[-1][1] != num_examples or any(
      a[1] != b[0] for a, b in zip(edges, edges[1:])):
    raise ScoreError(f"score shards of {what} cover {edges}, not [0, {num_examples}) in "
                     "order; rescore them with the same --num_workers")
  parts = []
  for i in range(count):
    with np.load(shard_paths(workdir, score, step, i, count)["data"]) as data:
      parts.append({k: data[k] for k in data.files})
  keys = set(parts[0])
  if any(set(p) != keys for p in parts):
    raise ScoreError(f"score shards of {what} hold different arrays; rescore them")
  mean = np.concatenate([p["mean"] for p in parts])
  std = np.concatenate([p["std"] for p in parts]) if "std" in keys else None
  per_run = np.concatenate([p["runs"] for p in parts], axis=1) if "runs" in keys else None
  settings = dict(records[0]["settings"])
  settings["merged_from_shards"] = count
  return save_scores(workdir, score, step, mean, std, per_run, settings)


def _check_compatible(records: list[dict], what: str) -> None:
  first = records[0]
  for record in records[1:]:
    for key in ("score", "step", "num_examples"):
      if record[key] != first[key]:
        raise ScoreError(f"score shards of {what} differ in {key} (shard 0: {first[key]}, "
                         f"shard {record['shard']}: {record[key]}); rescore them")
    a, b = first["settings"], record["settings"]
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differing:
      key = differing[0]
      raise ScoreError(
          f"score shards of {what} were made with different {', '.join(differing)} "
          f"(shard 0: {key}={a.get(key)!r}, shard {record['shard']}: {key}={b.get(key)!r}); "
          "delete the shards made with the wrong checkpoints or settings and rescore them")
