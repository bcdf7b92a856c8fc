"""Error-norm scores (Paul et al. 2021): distance of the softmax output to the one-hot label.

  el2n(x, y)     = || softmax(f(x)) - onehot(y) ||_2   (the norm, not its square)
  l1_error(x, y) = || softmax(f(x)) - onehot(y) ||_1

High = hard (or mislabelled); the paper keeps the highest EL2N examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datadiet_jax.scores._common import ApplyFn, probabilities_and_onehot


def el2n(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """EL2N. images: f32[B, H, W, C] normalized; labels: i32[B] -> f32[B] in [0, sqrt(2)]."""
  probs, onehot = probabilities_and_onehot(apply_fn, variables, images, labels)
  return jnp.linalg.norm(probs - onehot, ord=2, axis=-1)


def l1_error(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """L1 error norm. images: f32[B, H, W, C] normalized; labels: i32[B] -> f32[B] in [0, 2]."""
  probs, onehot = probabilities_and_onehot(apply_fn, variables, images, labels)
  return jnp.sum(jnp.abs(probs - onehot), axis=-1)
