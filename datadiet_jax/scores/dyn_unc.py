"""Dynamic uncertainty (Dyn-Unc; He et al. CVPR 2023, "Large-scale Dataset Pruning with
Dynamic Uncertainty", Eq. 2-3), accumulated during training like forgetting.

With p_t = softmax(z^(t))_y the true-class probability at visit t and a window of J visits,

  U_k(x) = sqrt( sum_{j=0}^{J-1} (p_{k+j} - mean_k)^2 / (J - 1) ),   mean_k = window mean
  U(x)   = (1 / (T - J + 1)) sum_{k=0}^{T-J} U_k(x)

(high = uncertain = kept). The state keeps the last J probabilities per example in a ring
buffer f32[J, N] (order does not matter for a window's std), so it is a pytree of arrays the
training loop can update on device and checkpoint for exact resume. Not in
scores/registry.py: the registry holds functions of one model; Dyn-Unc needs the trajectory.
Examples with fewer than J visits score NaN.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class DynUncState:
  """window: f32[J, N] last J true-class probs; visits: i32[N]; std_sum: f32[N] sum of
  window stds; num_windows: i32[N] complete windows so far."""

  window: jax.Array
  visits: jax.Array
  std_sum: jax.Array
  num_windows: jax.Array


def init_dyn_unc(num_examples: int, window_size: int = 10) -> DynUncState:
  if window_size < 2:
    raise ValueError(f"window_size={window_size} must be >= 2 (a std needs two epochs)")
  return DynUncState(window=jnp.zeros((window_size, num_examples), jnp.float32),
                     visits=jnp.zeros((num_examples,), jnp.int32),
                     std_sum=jnp.zeros((num_examples,), jnp.float32),
                     num_windows=jnp.zeros((num_examples,), jnp.int32))


def true_class_prob(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits: f32[B, C]; labels: i32[B] -> f32[B] softmax(logits)_y."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]


def update_dyn_unc(state: DynUncState, example_ids: jax.Array, logits: jax.Array,
                   labels: jax.Array) -> DynUncState:
  """example_ids: i32[B] (distinct); logits: f32[B, C]; labels: i32[B]."""
  j = state.window.shape[0]
  visits = state.visits[example_ids]
  window = state.window.at[visits % j, example_ids].set(true_class_prob(logits, labels))
  full = visits + 1 >= j
  std = jnp.std(window[:, example_ids], axis=0, ddof=1)
  return DynUncState(window=window, visits=state.visits.at[example_ids].add(1),
                     std_sum=state.std_sum.at[example_ids].add(jnp.where(full, std, 0.0)),
                     num_windows=state.num_windows.at[example_ids].add(full.astype(jnp.int32)))


def dyn_unc_score(state: DynUncState) -> jax.Array:
  """f32[N] mean window std (high = uncertain); NaN with fewer than J visits."""
  return jnp.where(state.num_windows > 0,
                   state.std_sum / jnp.maximum(state.num_windows, 1), jnp.nan)
