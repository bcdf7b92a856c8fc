"""DUAL (Cho et al. ICML 2025, "Lightweight Dataset Pruning without Full Training via Example
Difficulty and Prediction Uncertainty"): window uncertainty times difficulty, averaged.

With p_t the true-class probability at visit t and windows of J visits (as Dyn-Unc),

  DUAL(x) = (1 / (T - J + 1)) sum_k U_k(x) (1 - mean_k(x)),
  U_k = std(p_k .. p_{k+J-1}) (ddof 1),  mean_k = mean(p_k .. p_{k+J-1})

(high = kept). The paper scores it early in training (T = 30 epochs on CIFAR): read the
state saved with that epoch's checkpoint. The state is the Dyn-Unc ring buffer plus one
sum (a pytree of arrays: on-device updates, exact resume). Not in scores/registry.py: it
needs the trajectory, not one model. Fewer than J visits score NaN.

The state also sums p_t over all visits: `dual_prediction_mean` (the mean true-class
probability over the same T epochs) is the "prediction mean" that the paper's
pruning-ratio-adaptive Beta sampling needs (`datadiet_jax.prune.dual_sampling`).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from datadiet_jax.scores.dyn_unc import true_class_prob


@flax.struct.dataclass
class DUALState:
  """window: f32[J, N]; visits: i32[N]; score_sum: f32[N]; num_windows: i32[N];
  prob_sum: f32[N] sum of true-class probabilities over all visits."""

  window: jax.Array
  visits: jax.Array
  score_sum: jax.Array
  num_windows: jax.Array
  prob_sum: jax.Array


def init_dual(num_examples: int, window_size: int = 10) -> DUALState:
  if window_size < 2:
    raise ValueError(f"window_size={window_size} must be >= 2 (a std needs two epochs)")
  return DUALState(window=jnp.zeros((window_size, num_examples), jnp.float32),
                   visits=jnp.zeros((num_examples,), jnp.int32),
                   score_sum=jnp.zeros((num_examples,), jnp.float32),
                   num_windows=jnp.zeros((num_examples,), jnp.int32),
                   prob_sum=jnp.zeros((num_examples,), jnp.float32))


def update_dual(state: DUALState, example_ids: jax.Array, logits: jax.Array,
                labels: jax.Array) -> DUALState:
  """example_ids: i32[B] (distinct); logits: f32[B, C]; labels: i32[B]."""
  j = state.window.shape[0]
  visits = state.visits[example_ids]
  p_true = true_class_prob(logits, labels)
  window = state.window.at[visits % j, example_ids].set(p_true)
  full = visits + 1 >= j
  values = window[:, example_ids]
  term = jnp.std(values, axis=0, ddof=1) * (1.0 - jnp.mean(values, axis=0))
  return DUALState(window=window, visits=state.visits.at[example_ids].add(1),
                   score_sum=state.score_sum.at[example_ids].add(jnp.where(full, term, 0.0)),
                   num_windows=state.num_windows.at[example_ids].add(full.astype(jnp.int32)),
                   prob_sum=state.prob_sum.at[example_ids].add(p_true))


def dual_score(state: DUALState) -> jax.Array:
  """f32[N] mean over windows of std x (1 - mean); NaN with fewer than J visits."""
  return jnp.where(state.num_windows > 0,
                   state.score_sum / jnp.maximum(state.num_windows, 1), jnp.nan)


def dual_prediction_mean(state: DUALState) -> jax.Array:
  """f32[N] mean true-class probability over all visits so far; NaN where never visited."""
  return jnp.where(state.visits > 0, state.prob_sum / jnp.maximum(state.visits, 1), jnp.nan)
