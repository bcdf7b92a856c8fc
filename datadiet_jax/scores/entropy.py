"""Predictive entropy H(p) = -sum_c p_c log p_c of p = softmax(f(x)), with 0 log 0 = 0.

Label-free; in nats; in [0, log C]. High = uncertain.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datadiet_jax.scores._common import ApplyFn, sequence_logits


def entropy_from_logits(logits: jax.Array) -> jax.Array:
  """logits: f32[B, C] (entries may be -inf) -> f32[B] entropy in nats."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  probs = jnp.exp(log_probs)
  # log_softmax keeps p log p finite where p underflows; the where makes 0 log 0 = 0 exact
  # (also for -inf logits, where log p = -inf).
  return -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)


def entropy(apply_fn: ApplyFn, variables, images: jax.Array, labels: jax.Array) -> jax.Array:
  """Predictive entropy. images: f32[B, H, W, C] normalized; labels unused -> f32[B]."""
  del labels
  return entropy_from_logits(sequence_logits(apply_fn(variables, images)))
