"""DUAL's pruning-ratio-adaptive Beta sampling (Cho et al. ICML 2025, "Lightweight Dataset
Pruning without Full Training via Example Difficulty and Prediction Uncertainty").

Instead of keeping the highest DUAL scores (which at extreme pruning ratios keeps only the
hardest examples), the kept set is drawn without replacement with probability proportional
to a Beta density over each example's prediction mean, times its DUAL score:

  mu      = mean of pred_mean over the `num_anchor` = 10 highest-scored examples
  b       = 15 (1 - mu) (1 - r^c_D),   a = 16 - b            (r: pruning ratio, c_D = 4)
  P(keep) ~ Beta.pdf(pred_mean_i; a, b) * score_i,   K = N - floor(N r) draws without
                                                      replacement

Every constant is from behaapyy/dual-pruning, exp_cifar/data_subset.py `beta_sampling`:
`anchor_mean = pred_mean[mask[-10:]].mean()` (mask = ascending argsort of the scores, so the
10 highest scores: 10 examples, not 10 %), `y_b = 15 * (1-anchor_mean) * (1 -prune_rate **
c_d)`, `y_a = 16 - y_b`, `joint_p = beta.pdf(pred_mean, y_a, y_b) * score`,
`np.random.choice(N, p=joint_p/joint_p.sum(), size=subset_n, replace=False)`; c_D = 4 is
train_subset.py's `--c_d` default and its README's command. As b shrinks with r, the density
moves towards high prediction means (easier examples) at high pruning ratios. The paper's
equations could not be read in this project's stored copies (only the abstract), so no
equation numbers are cited.

`pred_mean` is the mean true-class probability over the T scoring epochs
(`datadiet_jax.scores.dual.dual_prediction_mean` of the state the DUAL score is read from).
The reference's data_subset.py takes it over the first 30 epochs (= T); one version of its
train_subset.py loads only epoch 0's probabilities (`np.load(...)[:1]`), and one version of
data_subset.py passes the argsort mask where the score belongs; neither is followed. The
reference also scales its DUAL score by 10, which cancels in the normalised weights.

Differences in mechanics, not in distribution: np.random.choice(p, replace=False) draws one
example at a time in proportion to the remaining weights; here the same distribution comes
from one Gumbel-top-K draw (keep the K largest log w_i - log(-log u_i)), with u f64[N]
uniforms made from an explicit `jax.random` key, so a key gives the same kept set on every
backend. K is the repository's `resolve_size(N, prune_fraction=r)` (N - floor(N r)); the
reference keeps int((1 - r) N), at most one fewer when N r is not an integer. The Beta
density's normaliser is the same for all examples and cancels, so weights are computed from
(a - 1) log x + (b - 1) log(1 - x) + log score, in float64.
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np
from scipy.special import xlog1py, xlogy

from datadiet_jax.prune.errors import SelectionError
from datadiet_jax.prune.select import rank_descending
from datadiet_jax.prune.validate import resolve_size, validate_fraction, validate_scores

BETA_SCALE = 15.0  # b = 15 (1 - mu) (1 - r^c_D); a = BETA_SCALE + 1 - b = 16 - b
C_D = 4.0
NUM_ANCHOR = 10


def dual_beta_params(anchor_mean: float, prune_fraction: float,
                     c_d: float = C_D) -> tuple[float, float]:
  """(a, b) of the Beta density: b = 15 (1 - mu) (1 - r^c_D), a = 16 - b."""
  b = BETA_SCALE * (1.0 - float(anchor_mean)) * (1.0 - float(prune_fraction) ** float(c_d))
  return BETA_SCALE + 1.0 - b, b


def _validate(scores, pred_mean, prune_fraction, c_d, num_anchor):
  scores = np.asarray(validate_scores(scores, None, name="scores"), np.float64)
  n = scores.shape[0]
  if n == 0:
    raise SelectionError("scores is empty: Beta sampling needs at least one example")
  if (scores < 0).any():
    raise SelectionError(f"scores contains {int((scores < 0).sum())} negative values (first at "
                         f"index {int(np.argmax(scores < 0))}): Beta sampling weights examples "
                         "by their DUAL score, which is >= 0")
  pred_mean = np.asarray(validate_scores(pred_mean, n, name="pred_mean"), np.float64)
  bad = (pred_mean < 0) | (pred_mean > 1)
  if bad.any():
    raise SelectionError(f"pred_mean contains {int(bad.sum())} values outside [0, 1] (first at "
                         f"index {int(np.argmax(bad))}): pass mean true-class probabilities")
  r = validate_fraction(prune_fraction, "prune_fraction", allow_one=False)
  if (isinstance(c_d, bool) or not isinstance(c_d, numbers.Real) or not math.isfinite(c_d)
      or c_d <= 0):
    raise SelectionError(f"c_d must be a finite number > 0 (the reference uses 4); got {c_d!r}")
  if (isinstance(num_anchor, bool) or not isinstance(num_anchor, numbers.Integral)
      or not 1 <= num_anchor <= n):
    raise SelectionError(f"num_anchor must be an int in [1, {n}] (the reference uses 10); got "
                         f"{num_anchor!r}")
  return scores, pred_mean, r


def dual_beta_weights(scores, pred_mean, prune_fraction: float, *, c_d: float = C_D,
                      num_anchor: int = NUM_ANCHOR) -> np.ndarray:
  """The sampling probabilities Beta.pdf(pred_mean; a, b) * score, normalised.

  scores: f32[N] DUAL scores (>= 0; NaN rejected); pred_mean: f32[N] in [0, 1];
  prune_fraction: float r in [0, 1); c_d: float > 0; num_anchor: int in [1, N]
  -> f64[N] summing to 1.
  """
  scores, pred_mean, r = _validate(scores, pred_mean, prune_fraction, c_d, num_anchor)
  anchor = float(pred_mean[rank_descending(scores)[:int(num_anchor)]].mean())
  a, b = dual_beta_params(anchor, r, c_d)
  if b <= 0:
    raise SelectionError(f"the {int(num_anchor)} highest-scored examples have prediction mean "
                         f"{anchor}, so the Beta parameter b = 15 (1 - mean)(1 - r^c_d) is "
                         f"{b} <= 0: Beta sampling needs them not all predicted with "
                         "probability 1; use another selector")
  with np.errstate(divide="ignore"):
    log_w = xlogy(a - 1.0, pred_mean) + xlog1py(b - 1.0, -pred_mean) + np.log(scores)
  if np.isposinf(log_w).any():
    i = int(np.argmax(np.isposinf(log_w)))
    raise SelectionError(f"pred_mean[{i}] = {pred_mean[i]} gets an infinite Beta density (a={a}, "
                         f"b={b} < 1): Beta sampling cannot weight it; clip prediction means "
                         "below 1 or use another selector")
  if not np.isfinite(log_w).any():
    raise SelectionError("every example has Beta sampling weight 0 (score 0 or density 0): "
                         "nothing can be drawn")
  w = np.exp(log_w - log_w.max())
  return w / w.sum()


def uniform_draws(key: jax.Array, n: int) -> np.ndarray:
  """f64[n] uniforms in (0, 1) from `key`: 53 random bits each, from two jax.random words."""
  try:
    bits = np.asarray(jax.random.bits(key, (2, n), np.uint32), np.uint64)
  except (TypeError, ValueError) as e:
    raise SelectionError(f"key must be a jax.random key (jax.random.key(seed) or PRNGKey); "
                         f"got {type(key).__name__}: {e}") from None
  mantissa = (bits[0] >> np.uint64(5)) * np.uint64(1 << 26) + (bits[1] >> np.uint64(6))
  return (mantissa.astype(np.float64) + 0.5) / float(1 << 53)


def gumbel_top_k(probs: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
  """The k ids with the largest log p_i - log(-log u_i) (ties: lower id), i.e. k draws
  without replacement in proportion to p. probs: f64[..., N]; u: f64[..., N] in (0, 1)
  -> i64[..., k] in draw order."""
  with np.errstate(divide="ignore"):
    keys = np.log(probs) - np.log(-np.log(u))
  return np.argsort(-keys, axis=-1, kind="stable")[..., :k]


def keep_dual_beta(scores, pred_mean, prune_fraction: float, key: jax.Array, *,
                   c_d: float = C_D, num_anchor: int = NUM_ANCHOR) -> np.ndarray:
  """Keeps N - floor(N r) examples drawn by DUAL's Beta sampling (see the module docstring).

  scores: f32[N] DUAL scores (>= 0); pred_mean: f32[N] mean true-class probabilities in
  [0, 1]; prune_fraction: float r in [0, 1); key: a jax.random key; c_d: float > 0;
  num_anchor: int in [1, N] -> i32[K] sorted kept ids. The same key gives the same ids.

  Raises:
    SelectionError: NaN/inf/negative scores, pred_mean outside [0, 1], r outside [0, 1),
      a bad key, c_d or num_anchor, or fewer examples with a positive weight than K.
  """
  probs = dual_beta_weights(scores, pred_mean, prune_fraction, c_d=c_d, num_anchor=num_anchor)
  n = probs.shape[0]
  k = resolve_size(n, prune_fraction=float(prune_fraction))
  positive = int((probs > 0).sum())
  if positive < k:
    raise SelectionError(f"only {positive} of {n} examples have a positive Beta sampling weight "
                         f"but prune_fraction={prune_fraction} keeps {k}: examples with score 0 "
                         "(or prediction mean 0) cannot be drawn; prune more or use another "
                         "selector")
  ids = gumbel_top_k(probs, uniform_draws(key, n), k)
  return np.sort(ids).astype(np.int32)
