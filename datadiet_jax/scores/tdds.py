"""Temporal Dual-Depth Scoring (TDDS; Zhang et al. CVPR 2024, "Spanning Training Progress:
Temporal Dual-Depth Scoring (TDDS) for Enhanced Dataset Pruning"), accumulated during
training like forgetting.

Definition, written from the authors' `importance_evaluation.py`
(github.com/zhangxin-xd/Dataset-Pruning-TDDS), which approximates the paper's projected
gradient contribution (first depth) by a KL-type difference of consecutive epochs' softmax
outputs and its spread over a sliding window (second depth). With p_t = softmax(z^(t)) f32[C]
the prediction at visit (epoch) t = 0 .. T-1, eps = 1e-8, a window of K epochs and decay beta:

  d_t = sum_c | p_{t+1,c} (log(p_{t+1,c} + eps) - log(p_{t,c} + eps)) |      t = 0 .. T-2
  R_k = || (d_k, .., d_{k+K-2}) - mean(d_k, .., d_{k+K-2}) ||_2            k = 0 .. T-K
  TDDS(x) = sum_{k=0}^{T-K} beta (1 - beta)^{T-K-k} R_k

(a window of K epochs holds K-1 differences; R_k is the L2 norm of their deviations from the
window mean, not a variance: no square, no division). The sum is an exponential moving
average over windows, the latest window weighted beta, so it is computed online:
S_k = (1 - beta) S_{k-1} + beta R_k, S_{-1} = 0, TDDS = S_{T-K}. Reading the state after
epoch T gives the reference's score for `trajectory_len` T, without knowing T in advance.
Defaults are the authors': K = `window_size` 10, beta = `decay` 0.9 (their README scores
CIFAR-100 with T = 30; behaapyy/dual-pruning's comparisons use T in {20, 60, 70, 90}).
Orientation: high = kept (the authors keep the highest scores).

Where the references differ, and what is followed here:
  * The paper's equations could not be read in this project's stored copies (only the
    abstract), so no equation numbers are cited; the code above is the definition used.
  * behaapyy/dual-pruning's re-implementation (`tdds` in exp_cifar/importance_evaluation.py)
    indexes every window from epoch 0 (`rearranged[j]`, not `[k + j]`), so all its windows
    are the first one; the authors' windowed definition is followed.
  * The authors save train-mode outputs of each epoch's own train steps (augmented inputs),
    as this accumulator sees them when the training loop calls it per step.
  * Their coreset training also weights each kept example's loss by its min-max normalised
    score; that is training, not scoring, and is not part of this module.

State (a pytree of arrays: on-device updates, checkpointed for exact resume):
prev_probs f32[N, C] (the last visit's softmax), diffs f32[K-1, N] (ring buffer of the last
K-1 differences; order does not matter for R_k), visits i32[N], ema f32[N], decay f32[].
Visit t of an example is its t-th update, so call it once per example per epoch (as the
other trajectory scores). Examples with fewer than K visits score NaN. Labels are not used
(TDDS is label-free); `update_tdds` takes them so every accumulator is called the same way.
"""

from __future__ import annotations

import numbers

import flax.struct
import jax
import jax.numpy as jnp

EPS = 1e-8


@flax.struct.dataclass
class TDDSState:
  """prev_probs: f32[N, C]; diffs: f32[K-1, N]; visits: i32[N]; ema: f32[N] moving average
  of window norms; decay: f32[] beta."""

  prev_probs: jax.Array
  diffs: jax.Array
  visits: jax.Array
  ema: jax.Array
  decay: jax.Array


def init_tdds(num_examples: int, num_classes: int, window_size: int = 10,
              decay: float = 0.9) -> TDDSState:
  """An empty TDDS accumulator for N examples of C classes (window K, moving-average beta)."""
  if (isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral)
      or window_size < 3):
    raise ValueError(f"window_size={window_size!r} must be an int >= 3: a window of K epochs "
                     "holds K-1 differences, and the spread of one difference is always 0")
  if not 0.0 < float(decay) <= 1.0:
    raise ValueError(f"decay={decay!r} must be in (0, 1] (the authors use 0.9)")
  return TDDSState(prev_probs=jnp.zeros((num_examples, num_classes), jnp.float32),
                   diffs=jnp.zeros((int(window_size) - 1, num_examples), jnp.float32),
                   visits=jnp.zeros((num_examples,), jnp.int32),
                   ema=jnp.zeros((num_examples,), jnp.float32),
                   decay=jnp.asarray(decay, jnp.float32))


def kl_difference(probs: jax.Array, prev_probs: jax.Array) -> jax.Array:
  """probs, prev_probs: f32[B, C] -> f32[B] sum_c |p_c (log(p_c + eps) - log(q_c + eps))|."""
  log_ratio = jnp.log(probs + EPS) - jnp.log(prev_probs + EPS)
  return jnp.sum(jnp.abs(probs * log_ratio), axis=-1)


def update_tdds(state: TDDSState, example_ids: jax.Array, logits: jax.Array,
                labels: jax.Array | None = None) -> TDDSState:
  """example_ids: i32[B] (distinct); logits: f32[B, C] of the train step; labels: unused."""
  del labels
  k1 = state.diffs.shape[0]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  visits = state.visits[example_ids]
  has_prev = visits >= 1
  d = kl_difference(probs, state.prev_probs[example_ids])
  slot = jnp.maximum(visits - 1, 0) % k1
  old = state.diffs[slot, example_ids]
  diffs = state.diffs.at[slot, example_ids].set(jnp.where(has_prev, d, old))
  window = diffs[:, example_ids]  # [K-1, B]
  norm = jnp.sqrt(jnp.sum(jnp.square(window - jnp.mean(window, axis=0)), axis=0))
  full = visits >= k1  # this visit completes a window of K epochs
  ema = state.ema[example_ids]
  ema = jnp.where(full, (1.0 - state.decay) * ema + state.decay * norm, ema)
  return TDDSState(prev_probs=state.prev_probs.at[example_ids].set(probs), diffs=diffs,
                   visits=state.visits.at[example_ids].add(1),
                   ema=state.ema.at[example_ids].set(ema), decay=state.decay)


def tdds_score(state: TDDSState) -> jax.Array:
  """f32[N] TDDS after the visits so far (high = kept); NaN with fewer than K visits."""
  k = state.diffs.shape[0] + 1
  return jnp.where(state.visits >= k, state.ema, jnp.nan)
