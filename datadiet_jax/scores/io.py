"""Score files: this package's layout (with a provenance sidecar) and the original's.

This package writes, under a workdir,

  scores/<score>/step_<k>.npy        f32[N] the score (the mean over runs), in example order
  scores/<score>/step_<k>.std.npy    f32[N] std over runs (optional)
  scores/<score>/step_<k>.runs.npy   f32[R, N] one row per run (optional)
  scores/<score>/step_<k>.json       sidecar: score, step, runs/seeds, dataset, example
                                     order, BN mode, package versions, git commit, ...

every file written atomically; the mean is written last, so its presence means the set is
complete. `load_scores` also reads the original code's layout under a run directory:

  error_l2_norm_scores/ckpt_<k>.npy  (el2n)
  grad_norm_scores/ckpt_<k>.npy      (grand)
  forget_scores/ckpt_<k>.npy         (forgetting)

and other codebases' files (scores/external.py): DUAL's per-seed folders

  <method>_score.npy, <method>_mask.npy  (el2n, entropy, forgetting, dynunc -> dyn_unc,
                                          dual_score_T<k> -> dual, aum, tdds_<T>_<J> -> tdds;
                                          no step; an index list alone is read as rank
                                          scores)
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Optional

import numpy as np

from datadiet_jax import artifacts
from datadiet_jax import provenance as _provenance
from datadiet_jax.scores import external
from datadiet_jax.scores.errors import ScoreError
from datadiet_jax.scores.registry import ALL_SCORE_NAMES, FORGETTING

# This package's name <-> the original code's folder prefix (`<prefix>_scores/ckpt_<k>.npy`).
ORIGINAL_NAMES = {"el2n": "error_l2_norm", "grand": "grad_norm", "forgetting": "forget"}
# Other spellings accepted for a score: the original's folder prefixes and score types.
_ALIASES = {"error_l2_norm": "el2n", "l2_error": "el2n", "grad_norm": "grand",
            "forget": "forgetting"}
_MODEL_FREE = ("input_norm", FORGETTING)
# GraNd at initialisation over R fresh inits (not GraNd at step 0 of trained runs): its own
# files, scores/grand_init/step_0.npy. Files it shared with grand@0 before are still read.
GRAND_INIT = "grand_init"


def canonical_score_name(score: str) -> str:
  """Our name for `score` (also accepts the original's names); ScoreError if unknown."""
  name = _ALIASES.get(score, score)
  if name not in ALL_SCORE_NAMES:
    raise ScoreError(f"unknown score '{score}'; choose one of {', '.join(ALL_SCORE_NAMES)} "
                     f"(or the original's {', '.join(sorted(_ALIASES))})")
  return name


def _file_name(score: str) -> str:
  """The folder name of `score`'s files: its canonical name, or GRAND_INIT."""
  return GRAND_INIT if score == GRAND_INIT else canonical_score_name(score)


def score_paths(workdir: str, score: str, step: int) -> dict:
  """{'mean', 'std', 'runs', 'json'}: where save_scores writes `score` at `step`."""
  base = os.path.join(workdir, "scores", _file_name(score), f"step_{int(step)}")
  return {"mean": base + ".npy", "std": base + ".std.npy", "runs": base + ".runs.npy",
          "json": base + ".json"}


def _check_scores(scores: np.ndarray, what: str, num_examples: Optional[int] = None,
                  ndim: int = 1) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != ndim:
    raise ScoreError(f"{what}: expected a {ndim}-d array of scores, got shape "
                     f"{list(scores.shape)}")
  if not np.issubdtype(scores.dtype, np.number):
    raise ScoreError(f"{what}: scores must be numeric, got {scores.dtype}")
  if num_examples is not None and scores.shape[-1] != num_examples:
    raise ScoreError(f"{what}: has {scores.shape[-1]} scores but the dataset has "
                     f"{num_examples} examples; it was computed on another dataset or subset "
                     "(remove it to recompute, or use the matching data flags)")
  num_nan = int(np.isnan(scores).sum()) if np.issubdtype(scores.dtype, np.floating) else 0
  if num_nan:
    raise ScoreError(f"{what}: {num_nan} of {scores.size} scores are NaN; recompute them "
                     "(a diverged model or a broken checkpoint)")
  return scores.astype(np.float32)


def save_scores(workdir: str, score_name: str, step: int, mean, std=None, per_run=None,
                provenance: Optional[dict] = None) -> str:
  """Writes the score files of `score_name` at `step`; returns the path of the mean.

  mean: f32[N]; std: f32[N] or None; per_run: f32[R, N] or None.
  provenance: what the scores are of, e.g. {'runs': [...], 'seeds': [...], 'dataset':
  'cifar10', 'example_order': ..., 'bn_mode': 'eval'}; merged into the sidecar with the
  package versions, git commit, host and time.
  """
  score = _file_name(score_name)
  step = int(step)
  if step < 0:
    raise ScoreError(f"step must be a non-negative int, got {step}")
  mean = _check_scores(mean, f"{score} step {step} mean")
  n = len(mean)
  std = None if std is None else _check_scores(std, f"{score} step {step} std", n)
  per_run = None if per_run is None else _check_scores(per_run, f"{score} step {step} runs", n,
                                                       ndim=2)
  paths = score_paths(workdir, score, step)
  record: dict[str, Any] = {
      "bn_mode": None if score in _MODEL_FREE else "eval (BatchNorm running statistics)",
      **(provenance or {}),
      "score": score, "step": step, "num_examples": n,
      "num_runs": None if per_run is None else int(per_run.shape[0]),
      "files": {"mean": os.path.basename(paths["mean"]),
                "std": None if std is None else os.path.basename(paths["std"]),
                "runs": None if per_run is None else os.path.basename(paths["runs"])},
      "summary": _summary(mean),
      "provenance": _provenance.provenance(),
  }
  if std is not None:
    artifacts.write_npy(paths["std"], std)
  if per_run is not None:
    artifacts.write_npy(paths["runs"], per_run)
  artifacts.write_json(paths["json"], record)
  artifacts.write_npy(paths["mean"], mean)  # last: its presence marks a complete set
  return paths["mean"]


def _summary(scores: np.ndarray) -> dict:
  finite = scores[np.isfinite(scores)]
  return {"num_inf": int(np.isinf(scores).sum()),
          "min": float(finite.min()) if finite.size else None,
          "max": float(finite.max()) if finite.size else None,
          "mean_finite": float(finite.mean()) if finite.size else None}


def _candidates(directory: str, score: str, step: int) -> list[str]:
  """Paths that may hold `score` at `step` under `directory`, in order of preference."""
  paths = [os.path.join(directory, "scores", score, f"step_{step}.npy"),
           os.path.join(directory, score, f"step_{step}.npy")]
  if score in ORIGINAL_NAMES:
    paths.append(os.path.join(directory, f"{ORIGINAL_NAMES[score]}_scores", f"ckpt_{step}.npy"))
  paths.extend(external.dual_candidates(directory, score))  # DUAL's, last: no step
  if score == GRAND_INIT and step == 0:
    legacy = os.path.join(directory, "scores", "grand", "step_0.npy")
    if _is_legacy_grand_init(legacy):
      paths.append(legacy)
  return paths


def _is_legacy_grand_init(path: str) -> bool:
  """Whether `path` is GraNd at init written as grand@0 (before it had its own name)."""
  sidecar = path[:-len(".npy")] + ".json"
  if not os.path.isfile(path) or not os.path.isfile(sidecar):
    return False
  try:
    note = artifacts.read_json(sidecar).get("note") or ""
  except (OSError, ValueError):
    return False
  return "initialisation" in note


def available_steps(directory: str, score: str) -> list[int]:
  """Steps with a `score` file under `directory`, in either layout."""
  score = _file_name(score)
  patterns = [(os.path.join(directory, "scores", score, "step_*.npy"), r"step_(\d+)\.npy$"),
              (os.path.join(directory, score, "step_*.npy"), r"step_(\d+)\.npy$")]
  if score in ORIGINAL_NAMES:
    patterns.append((os.path.join(directory, f"{ORIGINAL_NAMES[score]}_scores", "ckpt_*.npy"),
                     r"ckpt_(\d+)\.npy$"))
  steps = set()
  for pattern, regex in patterns:
    for path in glob.glob(pattern):
      match = re.search(regex, os.path.basename(path))
      if match:
        steps.add(int(match.group(1)))
  return sorted(steps)


def find_scores(path_or_dir: str, score: str, step: int) -> str:
  """The file holding `score` at `step`: `path_or_dir` itself if it is a file, else the
  first match of this package's layout or the original's under the directory."""
  if os.path.isfile(path_or_dir):
    return path_or_dir
  score = _file_name(score)
  step = int(step)
  if not os.path.isdir(path_or_dir):
    raise ScoreError(f"no score file or directory at {path_or_dir}")
  candidates = _candidates(path_or_dir, score, step)
  for path in candidates:
    if os.path.isfile(path):
      return path
  steps = available_steps(path_or_dir, score)
  raise ScoreError(f"no '{score}' scores for step {step} under {path_or_dir} (looked for "
                   f"{', '.join(candidates)}); available steps: {steps or 'none'}")


def load_scores(path_or_dir: str, score: str, step: int,
                num_examples: Optional[int] = None) -> np.ndarray:
  """f32[N] scores of `score` at `step` from a file, a workdir or an original run dir.

  An index list (`*_mask.npy`: example ids sorted by score, ascending; DUAL's layout) is
  read as rank scores; DUAL's files are read in this package's values and orientation
  (scores/external.py). Raises ScoreError if the file is missing (with
  the path and the available steps), has a length other than `num_examples`, or contains
  NaN (+inf is allowed: forgetting).
  """
  path = find_scores(path_or_dir, score, step)
  try:
    scores = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as error:
    raise ScoreError(f"{path} is not a readable .npy file ({error}); recompute the "
                     "scores") from error
  name = _file_name(score)
  if external.is_index_list(path):
    if num_examples is not None and np.ndim(scores) == 1 and len(scores) != num_examples:
      _check_scores(scores, path, num_examples)  # the length error, as for scores
    return _check_scores(external.as_ours(path, scores, name), path, num_examples)
  return external.as_ours(path, _check_scores(scores, path, num_examples), name)


def load_score_record(path_or_dir: str, score: str, step: int) -> Optional[dict]:
  """The JSON sidecar of the scores `load_scores` would read, or None (original layout)."""
  path = find_scores(path_or_dir, score, step)
  sidecar = path[:-len(".npy")] + ".json"
  return artifacts.read_json(sidecar) if os.path.isfile(sidecar) else None
