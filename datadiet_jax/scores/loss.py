"""Per-example cross-entropy loss CE(f(x), y) = -log softmax(f(x))_y of the eval-mode model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datadiet_jax.scores._common import ApplyFn
from datadiet_jax.train.tasks import per_example_loss


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits: f32[B, C], labels: i32[B] -> f32[B] = -log softmax(logits)[label]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def loss(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example loss. images: f32[B, H, W, C] normalized; labels: i32[B] -> f32[B] >= 0 CE.
  For joint outputs: CE(intent) + mean CE over labelled tokens (train.tasks.joint_loss)."""
  return per_example_loss(apply_fn(variables, images), labels)
