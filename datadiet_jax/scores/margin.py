"""Margin scores on the softmax probabilities p = softmax(f(x)).

As in the original code, the label-aware margins are "other minus true" (high = hard):

  max_margin(x, y) = max_{c != y} p_c - p_y         in [-1, 1]
  sum_margin(x, y) = sum_{c != y} (p_c - p_y)       = 1 - C * p_y, in [1 - C, 1]

`top2_margin` is the label-free confidence margin of active learning, with the opposite
orientation (high = easy / confident):

  top2_margin(x) = p_(1) - p_(2) >= 0,  the largest minus the second-largest probability.

It ignores the label; it is 0 when the two most likely classes tie. To keep the
*uncertain* examples, keep its lowest values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datadiet_jax.scores._common import ApplyFn, probabilities_and_onehot, sequence_logits


def max_margin(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """max over other classes of p_other - p_true. images f32[B, H, W, C]; labels i32[B] -> f32[B]."""
  probs, onehot = probabilities_and_onehot(apply_fn, variables, images, labels)
  p_true = jnp.sum(probs * onehot, axis=-1)
  p_other = jnp.max(jnp.where(onehot > 0, -jnp.inf, probs), axis=-1)
  return p_other - p_true


def sum_margin(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """sum over other classes of p_other - p_true. images f32[B, H, W, C]; labels i32[B] -> f32[B]."""
  probs, onehot = probabilities_and_onehot(apply_fn, variables, images, labels)
  p_true = jnp.sum(probs * onehot, axis=-1, keepdims=True)
  return jnp.sum(jnp.where(onehot > 0, 0.0, probs - p_true), axis=-1)


def top2_margin(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """p_(1) - p_(2) (largest minus second-largest probability; label unused) -> f32[B] >= 0."""
  del labels
  logits = sequence_logits(apply_fn(variables, images)).astype(jnp.float32)
  top2, _ = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), 2)
  return top2[:, 0] - top2[:, 1]
