"""Per-example cross-entropy loss CE(f(x), y) = -log softmax(f(x))_y of the eval-mode model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datadiet_jax.scores._common import ApplyFn


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits: f32[B, C], labels: i32[B] -> f32[B] = -log softmax(logits)[label]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def loss(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CE. images: f32[B, H, W, C] normalized; labels: i32[B] -> f32[B] >= 0."""
  return cross_entropy(apply_fn(variables, images), labels)
