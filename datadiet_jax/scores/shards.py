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


def shard_files(base: str, index: int, count: int) -> dict:
  """{'data': <base>.shard_<i>of<K>.npz, 'json': <base>.shard_<i>of<K>.json}."""
  base += f".shard_{int(index)}of{int(count)}"
  return {"data": base + ".npz", "json": base + ".json"}


def shard_paths(workdir: str, score: str, step: int, index: int, count: int) -> dict:
  """{'data': ....npz, 'json': ....json} of shard `index` of `count` of a score file."""
  return shard_files(score_paths(workdir, score, step)["mean"][:-len(".npy")], index, count)


def fingerprint(tree_leaves) -> str:
  """sha256 (first 16 hex digits) of arrays' shapes, dtypes and bytes: identifies the exact
  checkpoints (or inputs) a shard was scored with."""
  digest = hashlib.sha256()
  for leaf in tree_leaves:
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{leaf.shape}{leaf.dtype}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:16]


def save_shard(base: str, record: dict, index: int, count: int, start: int, stop: int,
               num_examples: int, arrays: dict, settings: Optional[dict] = None) -> str:
  """Writes shard `index` of `count` of the array file `base` (examples [start, stop) of
  `num_examples`): <base>.shard_<i>of<K>.npz with `arrays` (each [..., stop - start]; 'mean'
  f32[stop - start] required), then the .json marking it complete.

  record: what the shards are of (e.g. {'score': 'el2n', 'step': 5}), equal in every shard.
  settings: JSON-able values every shard must share (checked by merge_shards).
  """
  what = "/".join(str(v) for v in record.values()) or os.path.basename(base)
  arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items() if v is not None}
  if arrays["mean"].shape != (stop - start,):
    raise ScoreError(f"shard {index}of{count} of {what}: {arrays['mean'].shape[0]} scores for "
                     f"examples [{start}, {stop})")
  paths = shard_files(base, index, count)
  with artifacts.written_by_this_process():  # a shard is its process's own file
    with artifacts.atomic_path(paths["data"]) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    artifacts.write_json(paths["json"], {
        **record, "shard": int(index), "num_shards": int(count), "start": int(start),
        "stop": int(stop), "num_examples": int(num_examples), "settings": settings or {}})
  return paths["json"]


def shards_on_disk(base: str, count: int) -> list[int]:
  """Indices of the complete shards of `count` of `base` that exist."""
  return [i for i in range(count) if os.path.exists(shard_files(base, i, count)["json"])]


def merge_shards(base: str, what: str, count: Optional[int] = None,
                 hint: str = "score with --num_workers/--worker_index first") -> tuple:
  """Reads and checks the shards of `base`; returns ({name: concatenated array}, settings).

  count: the number of shards (default: the one the shard files on disk say; several
  counts on disk are an error). Raises ScoreError if a shard is missing, the shards do not
  tile the examples, or their records or settings differ.
  """
  if count is None:
    counts = sorted({int(m.group(2)) for m in map(_SHARD_RE.search,
                                                   glob.glob(glob.escape(base) + ".shard_*of*.json"))
                     if m})
    if not counts:
      raise ScoreError(f"no shards of {what} next to {base}; {hint}")
    if len(counts) > 1:
      raise ScoreError(f"shards of {what} were made for different worker counts "
                       f"{counts}; delete the shards of the other count and rescore them")
    count = counts[0]
  missing = sorted(set(range(count)) - set(shards_on_disk(base, count)))
  if missing:
    raise ScoreError(f"score shards {missing} of {count} for {what} are missing; run those "
                     "workers (--worker_index) with the same flags, then merge")
  records = [artifacts.read_json(shard_files(base, i, count)["json"]) for i in range(count)]
  _check_compatible(records, what)
  num_examples = records[0]["num_examples"]
  edges = [(r["start"], r["stop"]) for r in records]
  if edges[0][0] != 0 or edges[-1][1] != num_examples or any(
      a[1] != b[0] for a, b in zip(edges, edges[1:])):
    raise ScoreError(f"score shards of {what} cover {edges}, not [0, {num_examples}) in "
                     "order; rescore them with the same --num_workers")
  parts = []
  for i in range(count):
    with np.load(shard_files(base, i, count)["data"]) as data:
      parts.append({k: data[k] for k in data.files})
  keys = set(parts[0])
  if any(set(p) != keys for p in parts):
    raise ScoreError(f"score shards of {what} hold different arrays; rescore them")
  arrays = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in keys}
  settings = dict(records[0]["settings"])
  settings["merged_from_shards"] = count
  return arrays, settings


def save_score_shard(workdir: str, score: str, step: int, index: int, count: int,
                     start: int, stop: int, num_examples: int, mean, std=None, per_run=None,
                     settings: Optional[dict] = None) -> str:
  """Writes shard `index` of `count` of a score file (examples [start, stop)).

  mean: f32[stop - start]; std: same or None; per_run: f32[R, stop - start] or None.
  settings: JSON-able values every shard must share (checked by merge_score_shards).
  """
  score = _file_name(score)  # a score name, or grand_init
  base = score_paths(workdir, score, step)["mean"][:-len(".npy")]
  return save_shard(base, {"score": score, "step": int(step)}, index, count, start, stop,
                    num_examples, {"mean": mean, "std": std, "runs": per_run}, settings)


def shards_present(workdir: str, score: str, step: int, count: int) -> list[int]:
  """Indices of the complete shards of `count` of a score file that exist."""
  return shards_on_disk(score_paths(workdir, score, step)["mean"][:-len(".npy")], count)


def check_score_shards(workdir: str, score: str, step: int,
                       count: Optional[int] = None) -> None:
  """Raises the ScoreError merge_score_shards would raise; writes nothing."""
  score = _file_name(score)
  merge_shards(score_paths(workdir, score, step)["mean"][:-len(".npy")], f"{score}@{step}",
               count)


def merge_score_shards(workdir: str, score: str, step: int,
                       count: Optional[int] = None) -> str:
  """Merges the shards of `score`@`step` into the score file; returns the mean's path.

  count: as for merge_shards. Raises ScoreError if a shard is missing, the shards do not
  tile the examples, or their settings differ.
  """
  score = _file_name(score)  # a score name, or grand_init
  base = score_paths(workdir, score, step)["mean"][:-len(".npy")]
  arrays, settings = merge_shards(base, f"{score}@{step}", count)
  return save_scores(workdir, score, step, arrays["mean"], arrays.get("std"),
                     arrays.get("runs"), settings)


def _check_compatible(records: list[dict], what: str) -> None:
  first = records[0]
  for record in records[1:]:
    for key in [k for k in first if k not in ("shard", "start", "stop", "settings")]:
      if record.get(key) != first[key]:
        raise ScoreError(f"score shards of {what} differ in {key} (shard 0: {first[key]}, "
                         f"shard {record['shard']}: {record.get(key)}); rescore them")
    a, b = first["settings"], record["settings"]
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differing:
      key = differing[0]
      raise ScoreError(
          f"score shards of {what} were made with different {', '.join(differing)} "
          f"(shard 0: {key}={a.get(key)!r}, shard {record['shard']}: {key}={b.get(key)!r}); "
          "delete the shards made with the wrong checkpoints or settings and rescore them")
